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

from metatune.costs import CostModel, measure
from metatune.hypergrad import Plan, hypergrad, resolve
from metatune.objectives import Objective
from metatune.population import train_population
from metatune.tuners.groups import Hyper, flat_point, plain, point_from_flat
from metatune.unroll import is_finite, unroll


@dataclass(frozen=True)
class Proposal:
    """What a method asks to evaluate next, and what that costs in gradient evaluations.

    ``points``: (η, β) pairs (floats, or dicts by group prefix), each trained T steps from θ₀
    (several at once as one vmapped population); with ``hypergrad`` set (a mode), one point
    whose meta-gradient is taken.
    ``checkpoint``: reverse mode's segment length (None: store every step).
    ``start`` names the metagrad chain a meta-gradient belongs to.
    """

    points: tuple[tuple[Hyper, Hyper], ...]
    cost: float
    hypergrad: str | None = None
    start: int | None = None
    step: Any = None
    checkpoint: int | None = None

    def to_config(self) -> dict[str, Any]:
        """A JSON-able form (a Ray trial's config); a single point also as ``lr``, ``momentum``."""
        config: dict[str, Any] = {"points": [list(p) for p in self.points], "cost": self.cost,
                                  "hypergrad": self.hypergrad, "start": self.start, "checkpoint": self.checkpoint}
        if len(self.points) == 1:
            config.update(flat_point(*self.points[0]))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], default_cost: float = math.nan,
                    groups: tuple[str, ...] = ()) -> Proposal:
        """Inverse of :meth:`to_config`; a bare ``{"lr", "momentum"}`` (Optuna's; per group
        ``{"lr[g]", "momentum[g]"}``) is one point."""
        if "points" in config:
            points = tuple((plain(lr), plain(m)) for lr, m in config["points"])
            return cls(points, float(config["cost"]), config.get("hypergrad"), config.get("start"),
                       checkpoint=config.get("checkpoint"))
        return cls((point_from_flat(config, groups),), default_cost)


@dataclass(frozen=True)
class Outcome:
    """The evaluation of one point: ℓ_val(θ_T) (NaN with ``error`` when it crashed), seconds
    spent, and method-specific metrics (e.g. the meta-gradient)."""

    lr: Hyper
    momentum: Hyper
    value: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Context:
    """What every evaluation of one (objective, seed, T) shares."""

    objective: Objective
    params: dict
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

    def hypergrad_cost(self, plan: Plan) -> float:
        return self.costs.hypergrad(plan.mode, self.steps, checkpoint=plan.checkpoint)


def evaluate(context: Context, proposal: Proposal) -> list[Outcome]:
    """Train (or differentiate) every point of ``proposal``; one :class:`Outcome` per point."""
    if proposal.hypergrad is not None:
        return [evaluate_hypergrad(context, *proposal.points[0], proposal.hypergrad, proposal.checkpoint)]
    if len(proposal.points) == 1 or isinstance(proposal.points[0][0], dict):  # no per-group populations
        return [evaluate_point(context, *point) for point in proposal.points]
    return evaluate_population(context, list(proposal.points))


def evaluate_point(context: Context, lr: Hyper, momentum: Hyper) -> Outcome:
    """ℓ_val(θ_T) after T steps at fixed (η, β) from θ₀ (inf if the parameters blew up)."""
    objective, began = context.objective, time.perf_counter()
    run = unroll(objective.train_loss, context.params, lr, momentum, context.steps, context.batches)
    value = float(objective.val_loss(run.params)) if is_finite(*run.params.values()) else math.inf
    return Outcome(lr, momentum, value, time.perf_counter() - began, {"final_train_loss": float(run.losses[-1])})


def evaluate_population(context: Context, points: list[tuple[float, float]]) -> list[Outcome]:
    """Every point trained at once by :func:`metatune.population.train_population`."""
    objective, began = context.objective, time.perf_counter()
    result = train_population(objective.train_loss, objective.val_loss, context.params,
                              [p[0] for p in points], [p[1] for p in points], context.steps, context.batches)
    seconds = (time.perf_counter() - began) / len(points)
    return [Outcome(lr, m, value, seconds, {"final_train_loss": loss})
            for (lr, m), value, loss in zip(points, result.values.tolist(), result.final_train_loss.tolist())]


def evaluate_hypergrad(context: Context, lr: Hyper, momentum: Hyper, mode: str,
                       checkpoint: int | None = None) -> Outcome:
    """ℓ_val(θ_T) with its meta-gradient ∂ℓ/∂η, ∂ℓ/∂β, the growth rate and amplification."""
    objective, began = context.objective, time.perf_counter()
    hg = hypergrad(objective.train_loss, objective.val_loss, context.params, lr, momentum, context.steps,
                   context.batches, mode=mode, checkpoint=checkpoint, costs=context.costs)
    return Outcome(lr, momentum, hg.value, time.perf_counter() - began, hypergrad_metrics(hg))


def hypergrad_metrics(hg: Any) -> dict[str, float]:
    """The metrics of a :class:`~metatune.hypergrad.HypergradResult` a searcher reads:
    ``dvalue_dlr``, ``dvalue_dmomentum`` (per group ``dvalue_dlr[<prefix>]``, …), ``growth_rate``,
    ``amplification``."""
    metrics = {"growth_rate": float(hg.growth_rate), "amplification": float(hg.amplification)}
    for name, derivative in (("dvalue_dlr", hg.lr), ("dvalue_dmomentum", hg.momentum)):
        if isinstance(derivative, dict):
            metrics.update({f"{name}[{group}]": float(value) for group, value in derivative.items()})
        else:
            metrics[name] = float(derivative)
    return metrics
