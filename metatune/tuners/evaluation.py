"""Evaluate a :class:`~metatune.tuners.base.Proposal`: the one place a trial's training happens.

Pure functions of a :class:`Context` (θ₀, the minibatches, the cost model) and a proposal,
called in-process by :class:`~metatune.tuners.base.Tuner` and inside Ray trials by
:mod:`metatune.distributed`, so both backends compute the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metatune._types import Params
from metatune.costs import CostModel, measure
from metatune.hypergrad import Plan, hypergrad, resolve
from metatune.objectives import Objective
from metatune.population import train_population
from metatune.point import MetaGradient, Point
from metatune.unroll import is_finite, unroll


@dataclass(frozen=True)
class Proposal:
    """What a method asks to evaluate next, and what that costs in gradient evaluations.

    ``points``: each trained T steps from θ₀ (several at once as one vmapped population);
    with ``hypergrad`` set (a mode), one point whose meta-gradient is taken.
    ``checkpoint``: reverse mode's segment length (None: store every step).
    ``start`` names the metagrad chain a point belongs to; ``step`` is the chains' own
    record of it (driver-side only: it never leaves the process that asked).
    """

    points: tuple[Point, ...]
    cost: float
    hypergrad: str | None = None
    start: int | None = None
    step: Any = None
    checkpoint: int | None = None

    def to_config(self) -> dict[str, Any]:
        """A JSON-able form (a Ray trial's config); a single point also flat (``lr``, ``momentum``,
        :meth:`~metatune.point.Point.to_params`), so Ray's tables show it."""
        config: dict[str, Any] = {"points": [p.to_json() for p in self.points], "cost": self.cost,
                                  "hypergrad": self.hypergrad, "start": self.start, "checkpoint": self.checkpoint}
        if len(self.points) == 1:
            config.update(self.points[0].to_params())
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Proposal:
        """Inverse of :meth:`to_config` (without ``step``)."""
        points = tuple(Point.from_json(p) for p in config["points"])
        return cls(points, float(config["cost"]), config.get("hypergrad"), config.get("start"),
                   checkpoint=config.get("checkpoint"))


@dataclass(frozen=True)
class Outcome:
    """The evaluation of one point: ℓ_val(θ_T) (NaN with ``error`` when it crashed), seconds
    spent, method-specific metrics (e.g. the meta-gradient, :func:`hypergrad_metrics`) and
    ``node``, the Ray node that ran it (None in-process)."""

    point: Point
    value: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    node: str | None = None

    def gradient(self) -> MetaGradient | None:
        """The meta-gradient among the metrics, or None where none was taken."""
        return MetaGradient.from_metrics(self.metrics, self.point.groups, self.point.knots)


@dataclass(frozen=True)
class Context:
    """What every evaluation of one (objective, seed, T) shares."""

    objective: Objective
    params: Params
    batches: Any
    steps: int
    initial_value: float
    costs: CostModel

    @classmethod
    def build(cls, objective: Objective, seed: int, steps: int) -> Context:
        """θ₀ and the minibatches from ``seed``; the cost multiples counted in FLOPs once."""
        params = objective.init_params(seed)
        batches = objective.batches(seed, steps)
        costs = measure(objective.train_loss, params, None if batches is None else batches[0])
        return cls(objective, params, batches, steps, float(objective.val_loss(params)), costs)

    def trial_cost(self) -> float:
        """A fixed-(η, β) trial: T gradients and one validation evaluation."""
        return self.steps + 1.0

    def plan(self, mode: str) -> Plan:
        """``mode`` as run: "auto" resolved by measuring reverse mode's graph on the first batch."""
        batch = None if self.batches is None else self.batches[0]
        return resolve(mode, self.objective.train_loss, self.params, self.steps, batch)

    def hypergrad_cost(self, plan: Plan, hyperparameters: int = 2) -> float:
        """One meta-gradient by ``plan`` over ``hyperparameters`` (2·K·G; forward mode pays per one)."""
        return self.costs.hypergrad(plan.mode, self.steps, hyperparameters, checkpoint=plan.checkpoint)


def evaluate(context: Context, proposal: Proposal) -> list[Outcome]:
    """Train (or differentiate) every point of ``proposal``; one :class:`Outcome` per point."""
    if proposal.hypergrad is not None:
        return [evaluate_hypergrad(context, proposal.points[0], proposal.hypergrad, proposal.checkpoint)]
    if len(proposal.points) > 1 and all(p.uniform for p in proposal.points):
        return evaluate_population(context, list(proposal.points))
    return [evaluate_point(context, point) for point in proposal.points]  # populations of uniform points only


def run_diverged(params: Params, losses: Tensor) -> bool:
    """Whether a run diverged: θ_T or a training loss ℓ(θₜ; bₜ) is NaN/inf, as
    :class:`~metatune.population.PopulationResult` flags a member. ℓ_val(θ_T) alone does not
    tell: a validation loss may map NaN parameters to a finite number (the truncated quadratic
    ``torch.where(r.abs() < c, r**2, c**2)`` gives c² at r = NaN)."""
    return not is_finite(*params.values(), losses)


def evaluate_point(context: Context, point: Point) -> Outcome:
    """ℓ_val(θ_T) after T steps at fixed (η, β) from θ₀ (inf if the run diverged, :func:`run_diverged`)."""
    objective, began = context.objective, time.perf_counter()
    lr, momentum = point.hyperparameters(context.steps)
    run = unroll(objective.train_loss, context.params, lr, momentum, context.steps, context.batches)
    value = math.inf if run_diverged(run.params, run.losses) else float(objective.val_loss(run.params))
    return Outcome(point, value, time.perf_counter() - began, {"final_train_loss": float(run.losses[-1])})


def evaluate_population(context: Context, points: list[Point]) -> list[Outcome]:
    """Every point, each one (η, β) for every parameter and step (:attr:`~metatune.point.Point.uniform`),
    trained at once by :func:`metatune.population.train_population` (inf where a member diverged)."""
    objective, began = context.objective, time.perf_counter()
    result = train_population(objective.train_loss, objective.val_loss, context.params,
                              [p.lrs[0] for p in points], [p.momenta[0] for p in points], context.steps,
                              context.batches)
    seconds = (time.perf_counter() - began) / len(points)
    values = torch.where(result.diverged, math.inf, result.values).tolist()
    return [Outcome(point, value, seconds, {"final_train_loss": loss})
            for point, value, loss in zip(points, values, result.final_train_loss.tolist())]


def evaluate_hypergrad(context: Context, point: Point, mode: str, checkpoint: int | None = None) -> Outcome:
    """ℓ_val(θ_T) (inf if the run diverged, :func:`run_diverged`) with its meta-gradient ∂ℓ/∂η,
    ∂ℓ/∂β, the growth rate and amplification."""
    objective, began = context.objective, time.perf_counter()
    lr, momentum = point.hyperparameters(context.steps)
    hg = hypergrad(objective.train_loss, objective.val_loss, context.params, lr, momentum, context.steps,
                   context.batches, mode=mode, checkpoint=checkpoint, costs=context.costs)
    value = math.inf if run_diverged(hg.params, hg.train_losses) else hg.value
    return Outcome(point, value, time.perf_counter() - began, hypergrad_metrics(hg))


def hypergrad_metrics(hg: Any) -> dict[str, float]:
    """The metrics of a :class:`~metatune.hypergrad.HypergradResult` a searcher reads:
    :meth:`~metatune.point.MetaGradient.to_metrics` (``dvalue_dlr``, ``dvalue_dmomentum``, per
    group ``dvalue_dlr[<prefix>]``, per knot ``dvalue_dlr@<k>``, …; ``growth_rate``,
    ``amplification``)."""
    point = Point.of(hg.lr, hg.momentum)  # the derivatives have a point's shape
    gradient = MetaGradient(point.lrs, point.momenta, float(hg.growth_rate), float(hg.amplification))
    return gradient.to_metrics(point.groups, point.knots)
