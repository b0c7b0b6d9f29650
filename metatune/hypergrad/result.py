"""The result of a meta-gradient, and how both modes build it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from torch import Tensor

from metatune import dynamics
from metatune._types import Params
from metatune.hypergrad.layout import HyperKey
from metatune.unroll import InnerProblem, is_finite


HyperGradient = Union[float, list[float], dict[str, Union[float, list[float]]]]
"""∂ℓ_val/∂η or ∂ℓ_val/∂β in the form the hyperparameter was given."""


@dataclass(frozen=True)
class HypergradResult:
    """A meta-gradient and what it is worth.

    Attributes:
        value: ℓ_val(θ_T).
        lr: ∂ℓ_val/∂η: a float, or a list with one derivative per step (η given per step) or
            per knot (η given as :class:`~metatune.schedule.Knots`); a dict of those keyed by
            prefix for per-layer learning rates.
        momentum: ∂ℓ_val/∂β (likewise).
        growth_rate: per-step log growth γ of the sensitivities (module docstring).
        diverged: True when the run or the meta-gradient is NaN/inf.
        gradient_evals: cost in gradient-evaluation units.
        mode: the mode used; steps: T; window: steps differentiated through.
        train_losses: ℓ(θₜ; bₜ) for each inner step.
        params, velocity: the final θ_T and v_T (detached), to continue training from.
    """

    value: float
    lr: HyperGradient
    momentum: HyperGradient
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
    by_kind: dict[str, dict[str, list[float]]] = {"lr": {}, "momentum": {}}
    for (kind, group, _), number in zip(keys, numbers):
        by_kind[kind].setdefault(group, []).append(number)
    lr = _shaped(problem.lr, by_kind["lr"])
    mom = _shaped(problem.momentum, by_kind["momentum"])
    diverged = not is_finite(value, losses, *numbers)
    params, velocity = ({n: t.detach() for n, t in state.items()} for state in final)
    return HypergradResult(
        float(value), lr, mom, growth, diverged, cost, mode, problem.steps, window, losses, params, velocity
    )


def _shaped(path: dynamics.GroupedPath, grads: dict[str, list[float]]) -> HyperGradient:
    """Each group's derivatives in the form its hyperparameter was given: a float for a
    constant, a list per step or per knot; a dict by prefix for per-group values."""
    shaped = {g: numbers[0] if path.kinds[g] == dynamics.CONSTANT else numbers for g, numbers in grads.items()}
    return shaped if path.per_group else shaped[dynamics.SCALAR_GROUP]
