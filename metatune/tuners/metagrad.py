"""``metagrad`` (ours): Adam on meta-gradients of log ℓ_val(θ_T) in u = (log η, log(1 − β)).

Why these coordinates and this meta-objective: u maps the open box η > 0, β < 1 onto ℝ²
and makes equal steps equal *relative* changes of η and of 1 − β, which is how the
dynamics respond (ρ depends on ηλ and on √β). log ℓ_val turns the product-like decay
ℓ_T ≈ C ρ^{2T} into a sum, so its gradient does not vanish by orders of magnitude as
the loss falls (on the quadratic, from 10³ to 10⁻¹³). Chain rule:
∂ log ℓ/∂u₀ = η ∂ℓ/∂η / ℓ and ∂ log ℓ/∂u₁ = −(1 − β) ∂ℓ/∂β / ℓ.

Stability guard: λ_max of the training loss at θ₀ (Lanczos, charged to the budget) caps
η at (1 − margin) · 2(1 + β)/λ_max. The rate-optimal η* sits at κ/(κ + 1) of that cap
(DESIGN.md §1), so the default margin is small. A step whose run diverges, whose
sensitivities grow by more than ``max_amplification``, or whose loss is ``worse_factor``
times the last accepted one is rejected: the tuner backs off to the last accepted point
and halves its step. Starts: the rate-optimal (η*, β*) of the measured [λ_min, λ_max]
(λ_min ≤ 0 is replaced by λ_max/100), plus the best of a screening population when the
budget affords it. The starts take outer steps in turn until the budget is spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from metatune.hypergrad import MODES, hypergrad
from metatune.errors import invalid
from metatune.stability import critical_lr, optimal_hyperparameters
from metatune.tuners.base import Tuner

ASSUMED_CONDITION = 100.0
"""κ assumed for the starting point when the Hessian at θ₀ has no positive λ_min."""


@dataclass
class Start:
    """One outer optimisation: last accepted u, its log-loss gradient, Adam moments, step."""

    u: np.ndarray
    step_size: float
    value: float = math.inf
    grad: np.ndarray | None = None
    first_moment: np.ndarray = field(default_factory=lambda: np.zeros(2))
    second_moment: np.ndarray = field(default_factory=lambda: np.zeros(2))
    iterations: int = 0


def adam_direction(start: Start, grad: np.ndarray, beta1: float = 0.9, beta2: float = 0.999,
                   eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adam's bias-corrected step direction m̂/(√v̂ + ε) and the new moments (Kingma & Ba, 2015)."""
    t = start.iterations + 1
    m = beta1 * start.first_moment + (1 - beta1) * grad
    v = beta2 * start.second_moment + (1 - beta2) * grad * grad
    direction = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return direction, m, v


class MetagradTuner(Tuner):
    """Gradient-based tuning of (η, β) through the unrolled run; see the module docstring.

    Args:
        mode: hypergradient mode ("forward", "reverse").
        meta_lr: Adam step in u (0.1 ≈ a 10 % change of η or of 1 − β).
        margin: the guard keeps η ≤ (1 − margin) · critical lr at θ₀.
        screen: screening population size (None: 8 when the budget affords it twice over).
        starts: how many starts take outer steps.
        max_amplification: reject a step whose sensitivities grew more than this.
        worse_factor: reject a step whose loss exceeds this multiple of the last accepted one.
    """

    name = "metagrad"

    def __init__(self, objective, *, mode: str = "forward", meta_lr: float = 0.1, margin: float = 1e-4,  # noqa: ANN001
                 screen: int | None = None, starts: int = 2, max_amplification: float = 1e8,
                 worse_factor: float = 10.0, **kwargs) -> None:  # noqa: ANN003
        super().__init__(objective, **kwargs)
        if mode not in MODES or mode == "truncated":
            raise invalid("mode", mode, "'forward' or 'reverse'")
        if not meta_lr > 0:
            raise invalid("meta_lr", meta_lr, "a step size > 0")
        if not 0 <= margin < 1:
            raise invalid("margin", margin, "a fraction in [0, 1)")
        if screen is not None and (not isinstance(screen, int) or screen < 0):
            raise invalid("screen", screen, "None or an integer >= 0")
        if not isinstance(starts, int) or starts < 1:
            raise invalid("starts", starts, "an integer >= 1")
        self.mode, self.meta_lr, self.margin = mode, meta_lr, margin
        self.screen, self.n_starts = screen, starts
        self.max_amplification, self.worse_factor = max_amplification, worse_factor

    # -- coordinates and guard ----------------------------------------------------------------

    @staticmethod
    def decode(u: np.ndarray) -> tuple[float, float]:
        """(η, β) = (exp u₀, 1 − exp u₁)."""
        return float(math.exp(u[0])), float(1.0 - math.exp(u[1]))

    @staticmethod
    def encode(lr: float, momentum: float) -> np.ndarray:
        return np.array([math.log(lr), math.log(1.0 - momentum)])

    def lr_cap(self, momentum: float) -> float:
        """The largest η the guard and the space allow at β."""
        guard = (1.0 - self.margin) * critical_lr(self.curvature().lambda_max, momentum)
        return min(self.space.lr_high, guard)

    def project(self, u: np.ndarray) -> np.ndarray:
        """Clip u into the space and under the stability guard."""
        space = self.space
        u1 = float(np.clip(u[1], math.log(1.0 - space.momentum_high), math.log(1.0 - space.momentum_low)))
        momentum = 1.0 - math.exp(u1)
        cap = self.lr_cap(momentum)
        u0 = float(np.clip(u[0], math.log(min(space.lr_low, cap)), math.log(cap)))
        return np.array([u0, u1])

    # -- search ---------------------------------------------------------------------------------

    def search(self) -> None:
        self.charge(self.curvature().gradient_evals)
        starts = [Start(self.project(u), self.meta_lr) for u in self.starting_points()]
        while True:
            for start in starts:
                self.outer_step(start)

    def starting_points(self) -> list[np.ndarray]:
        """The theory point, then the best screened points, ``starts`` in all."""
        curvature = self.curvature()
        low = curvature.lambda_min if curvature.lambda_min > 0 else curvature.lambda_max / ASSUMED_CONDITION
        points = [self.encode(*optimal_hyperparameters(min(low, curvature.lambda_max), curvature.lambda_max))]
        screen = self.screen
        if screen is None:
            screen = 8 if self.remaining() > 2 * 8 * self.trial_cost() + self.costs.hypergrad(self.mode, self.steps) else 0
        if screen and self.n_starts > 1:
            screened = self.screen_population(screen)
            points += [self.encode(t.lr, t.momentum) for t in sorted(screened, key=lambda t: t.value)]
        return points[: self.n_starts]

    def screen_population(self, size: int) -> list:
        """Evaluate ``size`` Sobol points of the guarded space as one vmapped population."""
        from scipy.stats import qmc

        unit = qmc.Sobol(d=2, scramble=True, seed=self.seed).random(size)
        space = self.space
        momenta = space.momentum_low + unit[:, 1] * (space.momentum_high - space.momentum_low)
        points = []
        for fraction, momentum in zip(unit[:, 0], momenta):
            low, high = math.log(space.lr_low), math.log(max(self.lr_cap(momentum), space.lr_low))
            points.append((math.exp(low + fraction * (high - low)), float(momentum)))
        return [t for t in self.evaluate_population(points) if not t.diverged]

    def outer_step(self, start: Start) -> None:
        """Evaluate the meta-gradient at the start's proposal; accept and step, or back off."""
        proposal = start.u if start.grad is None else self.proposal(start)
        lr, momentum = self.decode(proposal)
        spent = self.costs.hypergrad(self.mode, self.steps)
        self.charge(spent)
        began = time.perf_counter()
        hg = hypergrad(self.objective.train_loss, self.objective.val_loss, self.params, lr, momentum,
                       self.steps, self.batches, mode=self.mode, costs=self.costs)
        trial = self.record(lr, momentum, hg.value, spent, time.perf_counter() - began,
                            growth_rate=hg.growth_rate, dvalue_dlr=hg.lr, dvalue_dmomentum=hg.momentum)
        grad = np.array([hg.lr * lr, -hg.momentum * (1.0 - momentum)]) / max(hg.value, 1e-300)
        rejected = (trial.diverged or not np.isfinite(grad).all() or hg.amplification > self.max_amplification
                    or trial.value > self.worse_factor * start.value)
        if rejected and start.grad is not None:
            start.step_size /= 2.0
            return
        direction, start.first_moment, start.second_moment = adam_direction(start, grad)
        start.u, start.value, start.grad = proposal, trial.value, direction
        start.iterations += 1

    def proposal(self, start: Start) -> np.ndarray:
        return self.project(start.u - start.step_size * start.grad)
