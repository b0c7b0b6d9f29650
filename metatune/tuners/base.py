"""What every tuning method shares: trials, results, the gradient-evaluation budget, and
the ask/tell loop.

A method subclasses :class:`Tuner` and implements :meth:`Tuner.ask` (the next
:class:`~metatune.tuners.evaluation.Proposal` that fits in a remaining budget) and
:meth:`Tuner.tell` (what its evaluation gave). In-process, :meth:`Tuner.search` evaluates
each proposal here; on Ray (:mod:`metatune.distributed`) a searcher asks and tells the same
tuner while Ray trials evaluate. Either way every result passes through
:meth:`Tuner.record`, which counts the budget and hands each :class:`Trial` to the one
``callback`` (how progress bars and the service's database writer receive results).
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import torch

from metatune import checks
from metatune._types import Params
from metatune.costs import DEFAULT, CostModel
from metatune.errors import invalid
from metatune.hessian import GradientGraph
from metatune.objectives import Objective, SearchSpace
from metatune.stability import HessianOperator, hessian_vector_product, lanczos_quadrature
from metatune.tuners.evaluation import Context, Outcome, Proposal, evaluate
from metatune.tuners.groups import Hyper, largest_spectral_radius, plain, point_key, resolve_groups
from metatune.tuners.records import DIVERGENCE_FACTOR, STATUSES, Trial, TuneResult, is_diverged

__all__ = ["DIVERGENCE_FACTOR", "STATUSES", "BudgetExhausted", "Callback", "Curvature", "Trial", "TuneResult",
           "Tuner", "estimate_curvature", "is_diverged"]

class BudgetExhausted(Exception):
    """Raised inside a search when the next evaluation would exceed the budget."""


@dataclass(frozen=True)
class Curvature:
    """Estimated ends of the training-loss Hessian's spectrum at θ₀ (λ_min NaN where that end
    is not positive), what estimating them cost, and the Gauss quadrature of the gradient's
    spectral measure they came from (``nodes``, ``weights``: Σ wⱼ f(θⱼ) ≈ gᵀ f(H) g, g = ∇ℓ(θ₀);
    empty where not known)."""

    lambda_min: float
    lambda_max: float
    gradient_evals: float
    nodes: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    @property
    def eigenvalues(self) -> list[float]:
        """The estimated ends of the spectrum, λ_min only when known and > 0."""
        low = self.lambda_min
        return [low, self.lambda_max] if math.isfinite(low) and low > 0 else [self.lambda_max]


Callback = Callable[[Trial], None]


class Tuner(abc.ABC):
    """Base of every method: a ledger of trials and budget around an ask/tell strategy.

    Args:
        objective: the problem; its ``steps`` is the horizon T unless ``steps`` is given.
        budget: gradient evaluations the search may spend.
        seed: seeds θ₀, the minibatches and the method's own randomness.
        space: search space (default: the objective's).
        groups: None (one η and one β), "layers", "tensors", or parameter-name prefixes: an η
            and a β per group, each in the space's bounds (:mod:`metatune.tuners.groups`).
        callback: called with each :class:`Trial` as it is recorded.
    """

    name: ClassVar[str]
    distributable: ClassVar[bool] = True
    """Whether :mod:`metatune.distributed` can run it (its proposals are independent runs)."""
    supports_groups: ClassVar[bool] = True
    """Whether it searches per-group spaces."""

    def __init__(
        self, objective: Objective, *, budget: float, seed: int = 0, space: SearchSpace | None = None,
        steps: int | None = None, groups: str | Sequence[str] | None = None, callback: Callback | None = None,
    ) -> None:
        self.objective = checks.instance("objective", objective, Objective, "a metatune.objectives.Objective")
        self.budget = checks.positive("budget", budget, note="gradient evaluations")
        self.seed = checks.integer("seed", seed, low=0)
        self.space = checks.instance("space", space, SearchSpace, "a SearchSpace", optional=True) \
            or objective.space
        self.steps = checks.positive_int("steps", objective.steps if steps is None else steps)
        if self.budget < self.trial_cost():
            raise invalid("budget", budget, f"at least one training run: {self.trial_cost():g} gradient evaluations "
                                            f"for T={self.steps}")
        self.callback = checks.function("callback", callback, "a function of one Trial", optional=True)
        self.context = Context.build(objective, self.seed, self.steps)
        self.params, self.batches, self.costs = self.context.params, self.context.batches, self.context.costs
        self.initial_value = self.context.initial_value
        self.groups = self.check_groups(groups, self.params)
        self.trials: list[Trial] = []
        self.spent = 0.0
        self._curvature: Curvature | None = None
        self._partial: dict[int, tuple[Proposal, list[Outcome]]] = {}

    @classmethod
    def check_groups(cls, groups: str | Sequence[str] | None, params: Params) -> tuple[str, ...]:
        """The prefixes of ``groups`` for ``params`` (:func:`~metatune.tuners.groups.resolve_groups`),
        refused unless None for a method that searches one η and one β."""
        resolved = resolve_groups(groups, params)
        if resolved and not cls.supports_groups:
            raise invalid("groups", groups, f"None: {cls.name} searches one η and one β")
        return resolved

    # -- the strategy: what each method implements ------------------------------------------

    def prepare(self) -> float:
        """Work done once before the first proposal (e.g. a curvature estimate); returns its
        cost in gradient evaluations, charged to the budget."""
        return 0.0

    @abc.abstractmethod
    def ask(self, remaining: float) -> Proposal | None:
        """The next proposal costing at most ``remaining`` gradient evaluations; None when
        nothing more fits or (on Ray) while the method waits for results it needs."""

    def tell(self, proposal: Proposal, outcomes: list[Outcome]) -> None:
        """Learn from the evaluation of ``proposal`` (one outcome per point)."""

    def complete(self, proposal: Proposal, outcomes: list[Outcome]) -> None:
        """Tell the method what ``proposal`` gave (with the recorded part of a population a
        resumed job had cut short)."""
        original, recorded = self._partial.pop(id(proposal), (proposal, []))
        self.tell(original, recorded + outcomes)

    def finished(self) -> bool:
        """True when :meth:`ask` will never propose again, whatever results come back."""
        return False

    # -- the in-process loop --------------------------------------------------------------------

    def search(self, history: list[Trial] | None = None) -> None:
        """Ask, evaluate here, record and tell until nothing more fits in the budget (after
        replaying ``history``, the trials of an interrupted run of this job)."""
        self.spent += self.prepare()
        pending = self.replay(history) if history else None
        while (proposal := pending or self.ask(self.remaining())) is not None:
            pending = None
            outcomes = evaluate(self.context, proposal)
            self.record_outcomes(proposal, outcomes)
            self.complete(proposal, outcomes)

    def run(self, history: list[Trial] | None = None) -> TuneResult:
        """Run the search to the end of the budget and return every trial (resuming after
        ``history`` when given). The curvature used to report ρ is estimated before the
        clock starts, so no method's wall time includes it (metagrad, which also steers by
        it, is charged its gradient evaluations in :meth:`prepare`)."""
        self.curvature()
        start = time.perf_counter()
        try:
            self.search(history)
        except BudgetExhausted:
            pass
        return self.result(time.perf_counter() - start)

    def result(self, wall_time: float) -> TuneResult:
        return TuneResult(self.name, self.objective.name, self.seed, self.budget, self.trials, wall_time)

    # -- resuming ------------------------------------------------------------------------------

    def keep(self, trials: list[Trial]) -> None:
        """Take trials recorded by an earlier, interrupted run of this job as they are: kept
        with their numbers, charged to the budget, not reported again."""
        for trial in trials:
            self.trials.append(trial)
            self.spent += trial.gradient_evals

    def replay(self, history: list[Trial]) -> Proposal | None:
        """Rebuild the method's state from ``history`` (this job's recorded trials): ask as the
        interrupted run did and tell each recorded outcome without evaluating it again. Trials
        are matched to proposals by their (η, β), so trials that finished out of order (runs
        with concurrency) replay too. Returns the first proposal that was asked but not (or
        only partly) recorded, to evaluate next, or None."""
        recorded: dict[tuple, list[Trial]] = {}
        for trial in history:
            recorded.setdefault(point_key(trial.lr, trial.momentum), []).append(trial)
        pending = None
        while any(recorded.values()):
            proposal = self.ask(self.remaining())
            if proposal is None:
                break
            keys = [point_key(*p) for p in proposal.points]
            found = [recorded[k].pop(0) for k in keys if recorded.get(k)]
            self.keep(found)
            if len(found) == len(proposal.points):
                self.tell(proposal, [_outcome_of(t) for t in found])
                continue
            done = {point_key(t.lr, t.momentum) for t in found}
            rest = tuple(p for p, k in zip(proposal.points, keys) if k not in done)
            pending = Proposal(rest, proposal.cost * len(rest) / len(proposal.points), proposal.hypergrad,
                               proposal.start, proposal.step)
            if found:  # a population cut short: tell it whole once the rest is evaluated
                self._partial[id(pending)] = (proposal, [_outcome_of(t) for t in found])
            else:
                pending = proposal
            break
        self.keep(sorted((t for trials in recorded.values() for t in trials), key=lambda t: t.number))
        return pending if pending is not None and pending.cost <= self.remaining() + 1e-9 else None

    # -- budget and records -------------------------------------------------------------------

    def remaining(self) -> float:
        return self.budget - self.spent

    def ensure_affordable(self, evals: float) -> None:
        """Raise :class:`BudgetExhausted` unless ``evals`` fit in what is left."""
        if evals > self.remaining() + 1e-9:
            raise BudgetExhausted

    def charge(self, evals: float) -> None:
        """Spend ``evals`` (raising :class:`BudgetExhausted`, spending nothing, if they do not fit)."""
        self.ensure_affordable(evals)
        self.spent += evals

    def record_outcomes(self, proposal: Proposal, outcomes: list[Outcome]) -> list[Trial]:
        """Record each point's outcome at an equal share of the proposal's cost."""
        share = proposal.cost / len(proposal.points)
        return [self.record_outcome(outcome, share, start=proposal.start) for outcome in outcomes]

    def record_outcome(self, outcome: Outcome, evals: float, start: int | None = None) -> Trial:
        """Charge ``evals`` and record one outcome (failed when it carries an error)."""
        self.spent += evals
        metrics = dict(outcome.metrics) if start is None else {**outcome.metrics, "start": start}
        return self.record(outcome.lr, outcome.momentum, outcome.value, evals, outcome.seconds,
                           error=outcome.error, **metrics)

    def record(self, lr: Hyper, momentum: Hyper, value: float, evals: float, seconds: float,
               error: str | None = None, **metrics: float) -> Trial:
        """Keep one evaluated point (its cost already charged) and report it to the callback."""
        diverged = error is None and is_diverged(value, self.initial_value)
        status = "failed" if error is not None else "diverged" if diverged else "completed"
        rho = self.spectral_radius(lr, momentum)
        trial = Trial(
            number=len(self.trials), lr=plain(lr), momentum=plain(momentum),
            value=float(value) if status == "completed" else math.inf, diverged=diverged, gradient_evals=evals,
            cumulative_evals=self.spent, wall_time=seconds, spectral_radius=rho, stable=rho < 1.0,
            metrics={k: float(v) for k, v in metrics.items()}, status=status, error=error,
            lambda_max=self.curvature().lambda_max,
        )
        self.trials.append(trial)
        if self.callback is not None:
            self.callback(trial)
        return trial

    # -- shared evaluations -------------------------------------------------------------------

    def trial_cost(self) -> float:
        """A fixed-(η, β) trial: T gradients and one validation evaluation."""
        return self.steps + 1.0

    def points(self, points: list[tuple[Hyper, Hyper]]) -> Proposal:
        """A proposal to train ``points`` at fixed (η, β), T + 1 gradient evaluations each."""
        return Proposal(tuple((plain(lr), plain(m)) for lr, m in points), self.trial_cost() * len(points))

    def curvature(self) -> Curvature:
        """λ_min, λ_max at θ₀ on the first batch, estimated (:func:`estimate_curvature`)."""
        if self._curvature is None:
            self._curvature = estimate_curvature(self.objective, self.params, self.batches, self.costs)
        return self._curvature

    def spectral_radius(self, lr: Hyper, momentum: Hyper) -> float:
        """ρ of the transition over the estimated curvature at θ₀ (λ_max, and λ_min where > 0):
        ρ ≥ 1 means the mode of largest curvature diverges. Per group, the largest ρ of any
        group's (η_g, β_g) over that spectrum: exact when the top mode lies in one group's
        parameters, a bound of that form otherwise."""
        return largest_spectral_radius(lr, momentum, self.curvature().eigenvalues, self.groups)


def _outcome_of(trial: Trial) -> Outcome:
    """The outcome a recorded trial stands for (a failed one as NaN with its error)."""
    value = math.nan if trial.status == "failed" else trial.value
    return Outcome(trial.lr, trial.momentum, value, trial.wall_time, dict(trial.metrics), trial.error)


def estimate_curvature(objective: Objective, params: dict, batches: Any, costs: CostModel = DEFAULT) -> Curvature:
    """The ends of the training-loss Hessian's spectrum at ``params`` on the first batch, from
    one Lanczos run started at the gradient g there (:func:`~metatune.stability.lanczos_quadrature`:
    λ_max to 1e-3, λ_min as far as 100 products resolve it, NaN when that end is ≤ 0, as for
    most networks), charged ``costs.hvps`` (the gradient once, then a backward pass through
    it per product). Starting at g makes the Ritz values and weights the Gauss quadrature of
    g's spectral measure, which predicts ℓ_T on the local quadratic model
    (:func:`~metatune.stability.horizon_loss`). Nothing is read from the objective's known
    optimum: a user's objective does not know its spectrum."""
    batch = None if batches is None else batches[0]
    graph = GradientGraph(objective.train_loss, params, batch)  # g, and the graph every product runs through
    operator = HessianOperator(hessian_vector_product(objective.train_loss, params, batch, graph=graph), params)
    start = torch.cat([graph.gradient[n].reshape(-1).cpu().double() for n in params]).numpy()
    nodes, weights = lanczos_quadrature(operator, start, max_steps=100, tol=1e-3)
    low, top = float(nodes[0]), float(nodes[-1])
    return Curvature(low if low > 0 else math.nan, top, costs.hvps(operator.evals),
                     tuple(float(x) for x in nodes), tuple(float(x) for x in weights))
