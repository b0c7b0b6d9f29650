"""What a search leaves: one :class:`Trial` per evaluated (η, β), and the :class:`TuneResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from metatune.point import Hyper, MetaGradient, Point

DIVERGENCE_FACTOR = 1e3
"""A run whose validation loss ends above this multiple of its start is called diverged."""


LOG_FLOOR = 1e-300
"""The smallest loss a logarithm is taken of: log ℓ stays finite for a loss of exactly 0."""

BUDGET_SLACK = 1e-9
"""Gradient evaluations a proposal may exceed what is left by: costs are sums of float
shares, so a proposal that fits exactly can come out a rounding error above it."""


class TrialStatus(str, Enum):
    """How a trial ended: ``completed``; ``diverged`` (a result: the run blew up); ``failed``
    (the evaluation itself crashed)."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ChainStep:
    """A metagrad trial's place in its chain, as the chains decided it when told.

    ``start``: the chain; ``accepted``: whether the chain moved to this point (it improved on
    the chain's best and its sensitivities did not explode); ``gradient``: the meta-gradient
    taken there (None for a value-only line-search point); ``line``: that point's fraction t
    of the step along which the line search runs (None for a meta-gradient step).
    """

    start: int
    accepted: bool
    gradient: MetaGradient | None = None
    line: float | None = None


def is_diverged(value: float, initial_value: float) -> bool:
    """A run diverged when ℓ_val(θ_T) is not finite or above DIVERGENCE_FACTOR · ℓ_val(θ₀)."""
    return not math.isfinite(value) or value > DIVERGENCE_FACTOR * initial_value


@dataclass(frozen=True)
class Trial:
    """One evaluated (η, β): its validation loss after T steps and what it cost.

    ``point`` is the (η, β) evaluated (``lr`` and ``momentum``: floats, or dicts by group
    prefix in a per-group space). ``value`` is ℓ_val(θ_T) (inf when the run diverged or
    failed); ``spectral_radius`` is ρ of the momentum transition over the curvature at θ₀;
    ``error`` says why a failed evaluation crashed; ``chain`` places a metagrad trial in its
    chain (None for other methods); ``node`` is the id of the Ray node that evaluated it
    (None in-process).
    """

    number: int
    point: Point
    value: float
    diverged: bool
    gradient_evals: float
    cumulative_evals: float
    wall_time: float
    spectral_radius: float
    stable: bool
    metrics: dict[str, float] = field(default_factory=dict)
    status: TrialStatus = TrialStatus.COMPLETED
    error: str | None = None
    lambda_max: float = math.nan
    chain: ChainStep | None = None
    node: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TrialStatus(self.status))

    @property
    def lr(self) -> Hyper:
        return self.point.lr

    def to_json(self) -> dict[str, Any]:
        """The trial as JSON (inf and NaN left as they are: the writer decides how to show them)."""
        chain = None if self.chain is None else {
            "start": self.chain.start, "accepted": self.chain.accepted, "line": self.chain.line,
            "gradient": None if self.chain.gradient is None else self.chain.gradient.to_metrics(self.point.groups, self.point.knots)}
        return {"number": self.number, **self.point.to_json(), "value": self.value, "diverged": self.diverged,
                "gradient_evals": self.gradient_evals, "cumulative_evals": self.cumulative_evals,
                "wall_time": self.wall_time, "spectral_radius": self.spectral_radius, "stable": self.stable,
                "metrics": dict(self.metrics), "status": self.status.value, "error": self.error,
                "lambda_max": self.lambda_max, "chain": chain, "node": self.node}

    @property
    def momentum(self) -> Hyper:
        return self.point.momentum


@dataclass
class TuneResult:
    """A finished search: the best (η, β) and every trial, in order."""

    method: str
    objective: str
    seed: int
    budget: float
    trials: list[Trial]
    wall_time: float = 0.0
    cancelled: bool = False

    @property
    def best(self) -> Trial | None:
        finite = [t for t in self.trials if t.status == TrialStatus.COMPLETED]
        return min(finite, key=lambda t: t.value) if finite else None

    @property
    def best_lr(self) -> Hyper:
        return self.best.lr if self.best else math.nan

    @property
    def best_momentum(self) -> Hyper:
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
            if trial.status == TrialStatus.COMPLETED:
                best = min(best, trial.value)
            curve.append((trial.cumulative_evals, best))
        return curve
