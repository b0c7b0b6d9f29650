"""What every tuning method shares: trials, results, the gradient-evaluation budget, and
the evaluation of one fixed (η, β) by training.

A method subclasses :class:`Tuner` and implements :meth:`Tuner.search`; it evaluates
points through :meth:`Tuner.record`, which charges the budget, keeps the best, and hands
each :class:`Trial` to the one ``callback`` (how Ray trials and the service's database
writer receive results).
"""

from __future__ import annotations

import abc
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from metatune.costs import DEFAULT, CostModel, measure
from metatune.errors import invalid
from metatune.objectives import Objective, SearchSpace
from metatune.population import train_population
from metatune.stability import HessianOperator, hessian_vector_product, largest_eigenvalue, spectral_radius
from metatune.unroll import is_finite, unroll

DIVERGENCE_FACTOR = 1e3
"""A run whose validation loss ends above this multiple of its start is called diverged."""


@dataclass(frozen=True)
class Trial:
    """One evaluated (η, β): its validation loss after T steps and what it cost.

    ``value`` is ℓ_val(θ_T) (inf when the run diverged); ``spectral_radius`` is ρ of the
    momentum transition over the objective's curvature at θ₀ ([λ_min, λ_max]).
    """

    number: int
    lr: float
    momentum: float
    value: float
    diverged: bool
    gradient_evals: float
    cumulative_evals: float
    wall_time: float
    spectral_radius: float
    stable: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TuneResult:
    """A finished search: the best (η, β) and every trial, in order."""

    method: str
    objective: str
    seed: int
    budget: float
    trials: list[Trial]
    wall_time: float = 0.0

    @property
    def best(self) -> Trial | None:
        finite = [t for t in self.trials if not t.diverged]
        return min(finite, key=lambda t: t.value) if finite else None

    @property
    def best_lr(self) -> float:
        return self.best.lr if self.best else math.nan

    @property
    def best_momentum(self) -> float:
        return self.best.momentum if self.best else math.nan

    @property
    def best_value(self) -> float:
        return self.best.value if self.best else math.inf

    @property
    def gradient_evals(self) -> float:
        return self.trials[-1].cumulative_evals if self.trials else 0.0

    def best_so_far(self) -> list[tuple[float, float]]:
        """(cumulative gradient evaluations, best value so far) after each trial."""
        best, curve = math.inf, []
        for trial in self.trials:
            if not trial.diverged:
                best = min(best, trial.value)
            curve.append((trial.cumulative_evals, best))
        return curve


class BudgetExhausted(Exception):
    """Raised inside a search when the next evaluation would exceed the budget."""


@dataclass(frozen=True)
class Curvature:
    """λ_max (and λ_min where the objective knows it, else NaN) of the training-loss Hessian
    at θ₀, and what estimating them cost."""

    lambda_min: float
    lambda_max: float
    gradient_evals: float

    @property
    def eigenvalues(self) -> list[float]:
        """The known ends of the spectrum, λ_min only when known and > 0."""
        low = self.lambda_min
        return [low, self.lambda_max] if math.isfinite(low) and low > 0 else [self.lambda_max]


Callback = Callable[[Trial], None]


class Tuner(abc.ABC):
    """Base of every method. Subclasses set ``name`` and implement :meth:`search`.

    Args:
        objective: the problem; its ``steps`` is the horizon T unless ``steps`` is given.
        budget: gradient evaluations the search may spend.
        seed: seeds θ₀, the minibatches and the method's own randomness.
        space: search space (default: the objective's).
        callback: called with each :class:`Trial` as it is recorded.
    """

    name: ClassVar[str]

    def __init__(
        self, objective: Objective, *, budget: float, seed: int = 0, space: SearchSpace | None = None,
        steps: int | None = None, callback: Callback | None = None,
    ) -> None:
        if not (isinstance(budget, (int, float)) and budget > 0 and math.isfinite(budget)):
            raise invalid("budget", budget, "a positive number of gradient evaluations")
        self.objective, self.budget, self.seed = objective, float(budget), int(seed)
        self.space = space or objective.space
        self.steps = objective.steps if steps is None else steps
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise invalid("steps", self.steps, "an integer >= 1")
        if self.budget < self.trial_cost():
            raise invalid("budget", budget, f"at least one training run: {self.trial_cost():g} gradient evaluations "
                                            f"for T={self.steps}")
        self.callback = callback
        self.params = objective.init_params(self.seed)
        self.batches = objective.batches(self.seed, self.steps)
        self.initial_value = float(objective.val_loss(self.params))
        self.trials: list[Trial] = []
        self.spent = 0.0
        self._curvature: Curvature | None = None

    @abc.abstractmethod
    def search(self) -> None:
        """Evaluate points with :meth:`record` until the budget is spent (BudgetExhausted ends it)."""

    def run(self) -> TuneResult:
        """Run the search to the end of the budget and return every trial."""
        start = time.perf_counter()
        try:
            self.search()
        except BudgetExhausted:
            pass
        return TuneResult(self.name, self.objective.name, self.seed, self.budget, self.trials,
                          time.perf_counter() - start)

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

    def record(self, lr: float, momentum: float, value: float, evals: float, seconds: float,
               **metrics: float) -> Trial:
        """Keep one evaluated point (its cost already charged) and report it to the callback."""
        diverged = not math.isfinite(value) or value > DIVERGENCE_FACTOR * self.initial_value
        rho = self.spectral_radius(lr, momentum)
        trial = Trial(
            number=len(self.trials), lr=float(lr), momentum=float(momentum),
            value=math.inf if diverged else float(value), diverged=diverged, gradient_evals=evals,
            cumulative_evals=self.spent, wall_time=seconds, spectral_radius=rho, stable=rho < 1.0,
            metrics={k: float(v) for k, v in metrics.items()},
        )
        self.trials.append(trial)
        if self.callback is not None:
            self.callback(trial)
        return trial

    # -- shared evaluations -------------------------------------------------------------------

    def trial_cost(self) -> float:
        """A fixed-(η, β) trial: T gradients and one validation evaluation."""
        return self.steps + 1.0

    def evaluate(self, lr: float, momentum: float) -> Trial:
        """Train T steps at fixed (η, β) from θ₀ and record the validation loss."""
        self.charge(self.trial_cost())
        start = time.perf_counter()
        run = unroll(self.objective.train_loss, self.params, lr, momentum, self.steps, self.batches)
        value = float(self.objective.val_loss(run.params)) if is_finite(*run.params.values()) else math.inf
        return self.record(lr, momentum, value, self.trial_cost(), time.perf_counter() - start,
                           final_train_loss=float(run.losses[-1]))

    def evaluate_population(self, points: list[tuple[float, float]]) -> list[Trial]:
        """Train every point at once with :func:`metatune.population.train_population`."""
        cost = self.trial_cost()
        self.ensure_affordable(cost * len(points))
        start = time.perf_counter()
        result = train_population(self.objective.train_loss, self.objective.val_loss, self.params,
                                  [p[0] for p in points], [p[1] for p in points], self.steps, self.batches)
        seconds = (time.perf_counter() - start) / len(points)
        values, train_losses = result.values.tolist(), result.final_train_loss.tolist()
        trials = []
        for (lr, momentum), value, train_loss in zip(points, values, train_losses):
            self.charge(cost)
            trials.append(self.record(lr, momentum, value, cost, seconds, final_train_loss=train_loss))
        return trials

    @functools.cached_property
    def costs(self) -> CostModel:
        """This objective's tangent and backward-step multiples, counted in FLOPs once."""
        batch = None if self.batches is None else self.batches[0]
        return measure(self.objective.train_loss, self.params, batch)

    def curvature(self) -> Curvature:
        """λ_min, λ_max at θ₀ on the first batch (the objective's exact values if it has them)."""
        if self._curvature is None:
            self._curvature = estimate_curvature(self.objective, self.params, self.batches, self.costs)
        return self._curvature

    def spectral_radius(self, lr: float, momentum: float) -> float:
        """ρ of the transition over the known curvature at θ₀ (λ_max, and λ_min where known):
        ρ ≥ 1 means the mode of largest curvature diverges."""
        return float(spectral_radius(lr, momentum, self.curvature().eigenvalues))


def estimate_curvature(objective: Objective, params: dict, batches: Any, costs: CostModel = DEFAULT) -> Curvature:
    """The objective's exact λ_min, λ_max when it has them; else λ_max of the training loss at
    ``params`` on the first batch by Lanczos to 1e-3 (λ_min is left NaN: near zero or negative
    for networks, slow to converge, and not needed by the guard). Each Hessian-vector product
    (a jvp of the gradient) costs ``costs.hvp`` gradients."""
    known = objective.optimum or {}
    if "lambda_min" in known and "lambda_max" in known:
        return Curvature(known["lambda_min"], known["lambda_max"], 0.0)
    batch = None if batches is None else batches[0]
    operator = HessianOperator(hessian_vector_product(objective.train_loss, params, batch), params)
    top = largest_eigenvalue(operator, tol=1e-3)
    return Curvature(math.nan, top, operator.evals * costs.hvp)
