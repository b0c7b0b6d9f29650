"""The result of a meta-gradient, and how both modes build it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from metatune import dynamics
from metatune._types import Params
from metatune.hypergrad.layout import HyperKey
from metatune.unroll import InnerProblem, is_finite


@dataclass(frozen=True)
class HypergradResult:
    """A meta-gradient and what it is worth.

    Attributes:
        value: ℓ_val(θ_T).
        lr: ∂ℓ_val/∂η (a dict keyed by prefix for per-layer learning rates).
        momentum: ∂ℓ_val/∂β (likewise).
        growth_rate: per-step log growth γ of the sensitivities (module docstring).
        diverged: True when the run or the meta-gradient is NaN/inf.
        gradient_evals: cost in gradient-evaluation units.
        mode: the mode used; steps: T; window: steps differentiated through.
        train_losses: ℓ(θₜ; bₜ) for each inner step.
        params, velocity: the final θ_T and v_T (detached), to continue training from.
    """

    value: float
    lr: float | dict[str, float]
    momentum: float | dict[str, float]
    growth_rate: float
    diverged: bool
    gradient_evals: float
    mode: str
    steps: int
    window: int
    train_losses: Tensor = field(repr=False)
    params: Params = field(repr=False, default_factory=dict)
    velocity: Params = field(repr=False, default_factory=dict)

    @property
    def amplification(self) -> float:
        """exp(γ · window): how much the sensitivities grew over the differentiated window."""
        return math.exp(min(self.growth_rate * self.window, 700.0))



def build_result(problem: InnerProblem, keys: list[HyperKey], value: Tensor, grads: Tensor, growth: float,  # noqa: PLR0913
                 cost: float, mode: str, window: int, losses: Tensor, final: tuple[Params, Params]) -> HypergradResult:
    numbers = grads.detach().tolist()
    by_kind: dict[str, dict[str, float]] = {"lr": {}, "momentum": {}}
    for (kind, group), number in zip(keys, numbers):
        by_kind[kind][group] = number
    lr = by_kind["lr"] if problem.lr.per_group else by_kind["lr"][dynamics.SCALAR_GROUP]
    mom = by_kind["momentum"] if problem.momentum.per_group else by_kind["momentum"][dynamics.SCALAR_GROUP]
    diverged = not is_finite(value, losses, *numbers)
    params, velocity = ({n: t.detach() for n, t in state.items()} for state in final)
    return HypergradResult(
        float(value), lr, mom, growth, diverged, cost, mode, problem.steps, window, losses, params, velocity
    )


