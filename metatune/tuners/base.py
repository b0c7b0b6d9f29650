"""What every tuning method shares: trials, results, the gradient-evaluation budget, and
the lifecycle of a tuning run.

A method subclasses :class:`Tuner` and implements :meth:`Tuner.ask` (the next
:class:`~metatune.tuners.evaluation.Proposal` that fits in a remaining budget) and
:meth:`Tuner.tell` (what its evaluation gave). A run has one lifecycle whichever backend
evaluates the proposals:

* :meth:`Tuner.start`: the curvature for ρ, the clock, the method's :meth:`Tuner.prepare`
  (charged), and a resumed job's recorded trials replayed into the method;
* :meth:`Tuner.propose` (the method's :meth:`Tuner.ask` within the remaining budget, less
  the points this job has recorded already), evaluation (here by
  :func:`~metatune.tuners.evaluation.evaluate`, or in Ray trials), then
  :meth:`Tuner.conclude`: the method is told and every point recorded as a :class:`Trial`
  (its cost charged, the one ``callback`` called: progress bars, the service's writer);
* :meth:`Tuner.finish`: the :class:`TuneResult`.

:meth:`Tuner.run` is that loop in-process; :func:`metatune.distributed.run` drives the
same calls from Ray Tune.
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
from metatune.point import Point
from metatune.schedule import KNOTS, WARMUP_COSINE, Schedule, ScheduleArg, Shape
from metatune.tuners.evaluation import Context, Outcome, Proposal, evaluate
from metatune.tuners.groups import largest_spectral_radius, resolve_groups
from metatune.tuners.records import (BUDGET_SLACK, DIVERGENCE_FACTOR, ChainStep, Trial, TrialStatus, TuneResult,
                                     is_diverged)

__all__ = ["DIVERGENCE_FACTOR", "BudgetExhausted", "Callback", "Curvature", "Trial", "TrialStatus", "TuneResult",
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
        schedule: K knots (η_t and β_t from K values each per group, each in the space's
            bounds), a :class:`~metatune.schedule.Schedule` (also the warm-up + cosine
            family), or None: one (η, β) over the run.
        callback: called with each :class:`Trial` as it is recorded.
        curvature: the spectrum's ends at θ₀ where the caller knows them (its charge is
            its ``gradient_evals``); None: estimated by :func:`estimate_curvature` and charged.
    """

    name: ClassVar[str]
    distributable: ClassVar[bool] = True
    """Whether :mod:`metatune.distributed` can run it (its proposals are independent runs)."""
    supports_groups: ClassVar[bool] = True
    """Whether it searches per-group spaces."""
    schedule_shapes: ClassVar[tuple[str, ...]] = (KNOTS, WARMUP_COSINE)
    """The schedule shapes it searches (K > 1 knots, or a fixed shape's parameters)."""

    def __init__(
        self, objective: Objective, *, budget: float, seed: int = 0, space: SearchSpace | None = None,
        steps: int | None = None, groups: str | Sequence[str] | None = None, schedule: ScheduleArg = None,
        callback: Callback | None = None, curvature: Curvature | None = None,
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
        self.schedule = self.check_schedule(schedule, self.steps)
        self.trials: list[Trial] = []
        self._recorded: dict[Point, list[Trial]] = {}
        self.spent = 0.0
        self._curvature = checks.instance("curvature", curvature, Curvature, "a Curvature", optional=True)
        self._partial: dict[int, tuple[Proposal, list[Outcome]]] = {}
        self._began = time.perf_counter()

    @classmethod
    def check_groups(cls, groups: str | Sequence[str] | None, params: Params) -> tuple[str, ...]:
        """The prefixes of ``groups`` for ``params`` (:func:`~metatune.tuners.groups.resolve_groups`),
        refused unless None for a method that searches one η and one β."""
        resolved = resolve_groups(groups, params)
        if resolved and not cls.supports_groups:
            raise invalid("groups", groups, f"None: {cls.name} searches one η and one β")
        return resolved

    @classmethod
    def check_schedule(cls, schedule: ScheduleArg, steps: int) -> Schedule:
        """``schedule`` as a :class:`~metatune.schedule.Schedule` with at most ``steps`` knots,
        refused where the method does not search its shape."""
        parsed = Schedule.parse(schedule)
        parsed.check_steps(steps)
        if not parsed.constant and parsed.shape not in cls.schedule_shapes:
            searched = " or ".join(cls.schedule_shapes) or "no schedule"
            raise invalid("schedule", parsed.to_json(), f"a shape {cls.name} searches: {searched} "
                                                        "(or None: one lr and one momentum)")
        return parsed

    @property
    def shape(self) -> Shape:
        """The shape of the constant schedule in this space (K knots, each at the same value)."""
        return Shape.of_knots(self.schedule.knots)

    def slots(self) -> int:
        """G·K: how many η (and as many β) a point of this space holds."""
        return max(len(self.groups), 1) * self.schedule.knots

    # -- the strategy: what each method implements ------------------------------------------

    def prepare(self) -> float:
        """Work done once before the first proposal (e.g. a curvature estimate); returns its
        cost in gradient evaluations, charged to the budget."""
        return 0.0

    @abc.abstractmethod
    def ask(self, remaining: float) -> Proposal | None:
        """The next proposal costing at most ``remaining`` gradient evaluations; None when
        nothing more fits or (on Ray) while the method waits for results it needs."""

    def tell(self, proposal: Proposal, outcomes: list[Outcome]) -> ChainStep | None:
        """Learn from the evaluation of ``proposal`` (one outcome per point); a method of
        chains returns where a single point's outcome leaves its chain."""
        return None

    def finished(self) -> bool:
        """True when :meth:`ask` will never propose again, whatever results come back."""
        return False

    def observe(self, outcomes: list[Outcome]) -> None:
        """Learn from outcomes of points this run did not ask for: the recorded trials of a
        resumed job that replaying its asks did not reproduce (:meth:`replay`). By default
        the method learns nothing from them; :meth:`propose` still never evaluates their
        points again."""

    # -- the lifecycle ----------------------------------------------------------------------------

    def start(self, history: Sequence[Trial] = ()) -> Proposal | None:
        """Begin the run: estimate the curvature that ρ is reported over (before the clock
        starts, so no method's wall time includes it; metagrad, which also steers by it, is
        charged in :meth:`prepare`), start the clock, charge :meth:`prepare`, and replay
        ``history`` (the trials of an interrupted run of this job). Returns a proposal the
        interrupted run had asked but not (or only partly) recorded, to evaluate first."""
        self.curvature()
        self._began = time.perf_counter()
        self.spent += self.prepare()
        return self.replay(list(history)) if history else None

    def conclude(self, proposal: Proposal, outcomes: list[Outcome]) -> list[Trial]:
        """Tell the method what ``proposal`` gave (with the recorded part of a population a
        resumed job had cut short), then record each point's outcome at an equal share of
        the proposal's cost, placed in its chain where the method has chains."""
        original, recorded = self._partial.pop(id(proposal), (proposal, []))
        chain = self.tell(original, recorded + outcomes)
        share = proposal.cost / len(proposal.points)
        return [self.record_outcome(outcome, share, chain) for outcome in outcomes]

    def finish(self, cancelled: bool = False) -> TuneResult:
        """Every trial so far, the wall time since :meth:`start`, and whether the run was cancelled."""
        return TuneResult(self.name, self.objective.name, self.seed, self.budget, self.trials,
                          time.perf_counter() - self._began, cancelled)

    def search(self, pending: Proposal | None = None) -> None:
        """Ask, evaluate here and conclude until nothing more fits in the budget (``pending``
        first)."""
        while (proposal := pending or self.propose(self.remaining())) is not None:
            pending = None
            self.conclude(proposal, evaluate(self.context, proposal))

    def run(self, history: Sequence[Trial] = ()) -> TuneResult:
        """The whole run in this process (resuming after ``history`` when given)."""
        pending = self.start(history)
        try:
            self.search(pending)
        except BudgetExhausted:
            pass
        return self.finish()

    # -- resuming ------------------------------------------------------------------------------

    def propose(self, remaining: float) -> Proposal | None:
        """The next proposal to evaluate: :meth:`ask`'s, less the points this job has recorded.

        An evaluation is a function of its point alone (θ₀, the minibatches and T are the
        job's), so a recorded point is told to the method from its record instead of being
        evaluated again (:meth:`record_for`): a resumed job never repeats a trial, whatever
        its method asks. A
        proposal whose points are all recorded is told at once and the method asked again;
        one with some recorded is evaluated for the rest and told whole when they are
        concluded (:meth:`conclude`)."""
        for _ in range(len(self.trials) + 1):  # each round tells the method a proposal or returns
            proposal = self.ask(remaining)
            if proposal is None:
                return None
            part = self.unrecorded(proposal)
            if part is not None:
                return part
        return None

    def unrecorded(self, proposal: Proposal) -> Proposal | None:
        """The part of ``proposal`` at points this job has not recorded: ``proposal`` itself
        when it has none recorded; None when all are, told to the method from their records;
        else the rest, which :meth:`conclude` tells together with the recorded part."""
        known = [self.record_for(point, proposal.hypergrad is not None) for point in proposal.points]
        told = [_outcome_of(trial) for trial in known if trial is not None]
        if not told:
            return proposal
        rest = tuple(point for point, trial in zip(proposal.points, known) if trial is None)
        if not rest:
            self.tell(proposal, told)
            return None
        part = Proposal(rest, proposal.cost * len(rest) / len(proposal.points), proposal.hypergrad, proposal.start,
                        proposal.step, proposal.checkpoint)
        self._partial[id(part)] = (proposal, told)
        return part

    def record_for(self, point: Point, meta_gradient: bool) -> Trial | None:
        """A recorded trial that answers an evaluation of ``point``: any trial there for a run
        at fixed (η, β); for a meta-gradient, one that took it (its metrics hold a growth
        rate, :meth:`~metatune.point.MetaGradient.from_metrics`) or whose run diverged or
        failed (no meta-gradient is told of such a run). None where there is none."""
        for trial in self._recorded.get(point, ()):
            if not meta_gradient or "growth_rate" in trial.metrics or trial.status != TrialStatus.COMPLETED:
                return trial
        return None

    def keep(self, trials: Sequence[Trial]) -> None:
        """Take trials recorded by an earlier, interrupted run of this job as they are: kept
        with their numbers, charged to the budget, not reported again."""
        for trial in trials:
            self.trials.append(trial)
            self._recorded.setdefault(trial.point, []).append(trial)
            self.spent += trial.gradient_evals

    def replay(self, history: list[Trial]) -> Proposal | None:
        """Rebuild the method's state from ``history`` (this job's recorded trials): ask as the
        interrupted run did and tell each recorded outcome without evaluating it again. Trials
        are matched to proposals by their point, so trials that finished out of order replay
        too. While the asks reproduce the recorded points the method's state, its random
        state included, is the interrupted run's, and the resumed run goes on with the
        sequence that run would have produced. Where an ask is not recorded (with concurrency
        the interrupted run asked while results were outstanding, so a sampler saw fewer
        results there), the trials not yet matched are told by :meth:`observe` instead, and
        :meth:`propose` keeps their points from being evaluated again. Returns the first
        proposal that was asked but not (or only partly) recorded, to evaluate next, or None."""
        recorded: dict[Point, list[Trial]] = {}
        for trial in history:
            recorded.setdefault(trial.point, []).append(trial)
        pending = None
        while any(recorded.values()):
            proposal = self.ask(self.remaining())
            if proposal is None:
                break
            found = [recorded[point].pop(0) for point in proposal.points if recorded.get(point)]
            self.keep(found)
            pending = self.unrecorded(proposal)
            if pending is not None or not found:  # an ask the interrupted run did not record
                break
        unmatched = sorted((t for trials in recorded.values() for t in trials), key=lambda t: t.number)
        self.keep(unmatched)
        if unmatched:
            self.observe([_outcome_of(t) for t in unmatched])
        return pending if pending is not None and pending.cost <= self.remaining() + BUDGET_SLACK else None

    # -- budget and records -------------------------------------------------------------------

    def remaining(self) -> float:
        return self.budget - self.spent

    def ensure_affordable(self, evals: float) -> None:
        """Raise :class:`BudgetExhausted` unless ``evals`` fit in what is left."""
        if evals > self.remaining() + BUDGET_SLACK:
            raise BudgetExhausted

    def charge(self, evals: float) -> None:
        """Spend ``evals`` (raising :class:`BudgetExhausted`, spending nothing, if they do not fit)."""
        self.ensure_affordable(evals)
        self.spent += evals

    def record_outcome(self, outcome: Outcome, evals: float, chain: ChainStep | None = None) -> Trial:
        """Charge ``evals`` and record one outcome (failed when it carries an error)."""
        self.spent += evals
        return self.record(outcome.point, outcome.value, evals, outcome.seconds, error=outcome.error, chain=chain,
                           node=outcome.node, **outcome.metrics)

    def record(self, point: Point, value: float, evals: float, seconds: float, error: str | None = None,
               chain: ChainStep | None = None, node: str | None = None, **metrics: float) -> Trial:
        """Keep one evaluated point (its cost already charged) and report it to the callback."""
        diverged = error is None and is_diverged(value, self.initial_value)
        status = TrialStatus.FAILED if error is not None else TrialStatus.DIVERGED if diverged \
            else TrialStatus.COMPLETED
        rho = self.spectral_radius(point)
        trial = Trial(
            number=len(self.trials), point=point, value=float(value) if status == TrialStatus.COMPLETED else math.inf,
            diverged=diverged, gradient_evals=evals, cumulative_evals=self.spent, wall_time=seconds,
            spectral_radius=rho, stable=rho < 1.0, metrics={k: float(v) for k, v in metrics.items()}, status=status,
            error=error, lambda_max=self.curvature().lambda_max, chain=chain, node=node,
        )
        self.trials.append(trial)
        self._recorded.setdefault(point, []).append(trial)
        if self.callback is not None:
            self.callback(trial)
        return trial

    # -- shared evaluations -------------------------------------------------------------------

    def trial_cost(self) -> float:
        """A fixed-(η, β) trial: T gradients and one validation evaluation."""
        return self.steps + 1.0

    def points(self, points: Sequence[Point]) -> Proposal:
        """A proposal to train ``points`` at fixed (η, β), T + 1 gradient evaluations each."""
        return Proposal(tuple(points), self.trial_cost() * len(points))

    def curvature(self) -> Curvature:
        """λ_min, λ_max at θ₀ on the first batch, estimated (:func:`estimate_curvature`)."""
        if self._curvature is None:
            self._curvature = estimate_curvature(self.objective, self.params, self.batches, self.costs)
        return self._curvature

    def spectral_radius(self, point: Point) -> float:
        """ρ of the transition over the estimated curvature at θ₀ (λ_max, and λ_min where > 0):
        ρ ≥ 1 means the mode of largest curvature diverges. Per group, the largest ρ of any
        group's (η_g, β_g) over that spectrum: exact when the top mode lies in one group's
        parameters, a bound of that form otherwise."""
        return largest_spectral_radius(point, self.curvature().eigenvalues)


def _outcome_of(trial: Trial) -> Outcome:
    """The outcome a recorded trial stands for (a failed one as NaN with its error)."""
    value = math.nan if trial.status == TrialStatus.FAILED else trial.value
    return Outcome(trial.point, value, trial.wall_time, dict(trial.metrics), trial.error, trial.node)


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
