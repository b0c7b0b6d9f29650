"""What a search leaves: one :class:`Trial` per evaluated (η, β), and the :class:`TuneResult`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DIVERGENCE_FACTOR = 1e3
"""A run whose validation loss ends above this multiple of its start is called diverged."""


STATUSES = ("completed", "diverged", "failed")


def is_diverged(value: float, initial_value: float) -> bool:
    """A run diverged when ℓ_val(θ_T) is not finite or above DIVERGENCE_FACTOR · ℓ_val(θ₀)."""
    return not math.isfinite(value) or value > DIVERGENCE_FACTOR * initial_value


@dataclass(frozen=True)
class Trial:
    """One evaluated (η, β): its validation loss after T steps and what it cost.

    ``lr`` and ``momentum`` are floats, or dicts by group prefix in a per-group space.
    ``value`` is ℓ_val(θ_T) (inf when the run diverged or failed); ``spectral_radius`` is ρ of
    the momentum transition over the curvature at θ₀; ``status`` is "completed", "diverged"
    (a result: the run blew up) or "failed" (the evaluation itself crashed; ``error`` says why).
    """

    number: int
    lr: float | dict[str, float]
    momentum: float | dict[str, float]
    value: float
    diverged: bool
    gradient_evals: float
    cumulative_evals: float
    wall_time: float
    spectral_radius: float
    stable: bool
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "completed"
    error: str | None = None
    lambda_max: float = math.nan


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
        finite = [t for t in self.trials if t.status == "completed"]
        return min(finite, key=lambda t: t.value) if finite else None

    @property
    def best_lr(self) -> float | dict[str, float]:
        return self.best.lr if self.best else math.nan

    @property
    def best_momentum(self) -> float | dict[str, float]:
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
            if trial.status == "completed":
                best = min(best, trial.value)
            curve.append((trial.cumulative_evals, best))
        return curve
