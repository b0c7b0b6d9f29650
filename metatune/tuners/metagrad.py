"""``metagrad`` (ours): descend meta-gradients of log ℓ_val(θ_T) in u = (log η, log(1 − β)).

Why these coordinates and this meta-objective: u maps the open box η > 0, β < 1 onto ℝ²
and makes equal steps equal *relative* changes of η and of 1 − β, which is how the
dynamics respond (ρ depends on ηλ and on √β). log ℓ_val turns the product-like decay
ℓ_T ≈ C ρ^{2T} into a sum, so its gradient does not vanish by orders of magnitude as
the loss falls (on the quadratic, from 10³ to 10⁻¹³). Chain rule:
∂ log ℓ/∂u₀ = η ∂ℓ/∂η / ℓ and ∂ log ℓ/∂u₁ = −(1 − β) ∂ℓ/∂β / ℓ.

Outer optimiser: BFGS by default (``outer="bfgs"``; Nocedal & Wright, Alg. 6.1), its first
step ``meta_lr`` long along −∇, its inverse Hessian rescaled by sᵀy/yᵀy after the first
accepted step; or Adam (``outer="adam"``, steps of ``meta_lr`` per coordinate). Each
meta-gradient costs a whole training run, so few are taken: on the quadratic, BFGS reaches
2× the finite-horizon limit in 5 where Adam stalls at 7× (BENCHMARKS.md).

Stability guard: λ_max of the training loss at θ₀ (Lanczos, charged to the budget) caps
η at (1 − margin) · 2(1 + β)/λ_max. The rate-optimal η* sits at κ/(κ + 1) of that cap
(DESIGN.md §1), so the default margin is small. A step is accepted only if its loss is
lower than the last accepted one and its run neither diverged nor amplified the
sensitivities more than ``max_amplification``; otherwise the tuner stays at the last
accepted point and halves its step. Starts: the rate-optimal (η*, β*) of [λ_low, λ_max],
λ_low = max(λ_min, λ_max/κ_T), κ_T = (T/5)² the largest condition number T steps can
resolve (λ_max/100 where λ_min is unknown), plus the best of a screening population when
the budget affords it. The starts take outer steps in turn until the budget is spent.
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
"""κ assumed for the starting point when λ_min at θ₀ is unknown or not positive."""

OUTER = ("bfgs", "adam")


@dataclass
class Start:
    """One outer optimisation: the last accepted u, its log-loss and gradient, and the
    optimiser's state (step multiplier, BFGS inverse Hessian, Adam moments)."""

    u: np.ndarray
    index: int = 0
    value: float = math.inf
    grad: np.ndarray | None = None
    step: float = 1.0
    inverse_hessian: np.ndarray | None = None
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


def bfgs_update(inverse_hessian: np.ndarray, s: np.ndarray, y: np.ndarray, first: bool) -> np.ndarray:
    """H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1/(yᵀs); skipped unless yᵀs > 0.

    ``first``: H is first rescaled to (sᵀy/yᵀy) I (Nocedal & Wright, eq. 6.20)."""
    curvature = float(s @ y)
    if curvature <= 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
        return inverse_hessian
    if first:
        inverse_hessian = np.eye(2) * curvature / float(y @ y)
    rho, identity = 1.0 / curvature, np.eye(2)
    left = identity - rho * np.outer(s, y)
    return left @ inverse_hessian @ left.T + rho * np.outer(s, s)


class MetagradTuner(Tuner):
    """Gradient-based tuning of (η, β) through the unrolled run; see the module docstring.

    Args:
        mode: hypergradient mode ("forward", "reverse").
        outer: "bfgs" or "adam".
        meta_lr: first step length in u (0.03 ≈ a 3 % change of η or of 1 − β); Adam's step.
        margin: the guard keeps η ≤ (1 − margin) · critical lr at θ₀.
        guard: False lifts that cap (the back-off still rejects runs that explode). Networks
            often train stably above the critical lr of θ₀, whose curvature the first steps
            reduce: on mlp-digits the guard excludes the region where TPE finds its best.
        screen: screening population size (None: 8 when the budget affords it twice over).
        starts: how many starts take outer steps.
        max_amplification: reject a step whose sensitivities grew more than this.
    """

    name = "metagrad"

    def __init__(self, objective, *, mode: str = "forward", outer: str = "bfgs", meta_lr: float = 0.03,  # noqa: ANN001
                 margin: float = 1e-4, guard: bool = True, screen: int | None = None, starts: int = 2,
                 max_amplification: float = 1e8, **kwargs) -> None:  # noqa: ANN003
        super().__init__(objective, **kwargs)
        if mode not in MODES or mode == "truncated":
            raise invalid("mode", mode, "'forward' or 'reverse'")
        if outer not in OUTER:
            raise invalid("outer", outer, f"one of {OUTER}")
        if not meta_lr > 0:
            raise invalid("meta_lr", meta_lr, "a step size > 0")
        if not 0 <= margin < 1:
            raise invalid("margin", margin, "a fraction in [0, 1)")
        if screen is not None and (not isinstance(screen, int) or screen < 0):
            raise invalid("screen", screen, "None or an integer >= 0")
        if not isinstance(starts, int) or starts < 1:
            raise invalid("starts", starts, "an integer >= 1")
        self.mode, self.outer, self.meta_lr, self.margin = mode, outer, meta_lr, margin
        self.screen, self.n_starts, self.max_amplification = screen, starts, max_amplification
        self.guard = bool(guard)

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
        if not self.guard:
            return self.space.lr_high
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
        starts = [Start(self.project(u), index=i) for i, u in enumerate(self.starting_points())]
        while True:
            for start in starts:
                self.outer_step(start)

    def starting_points(self) -> list[np.ndarray]:
        """The theory point, then the best screened points, ``starts`` in all."""
        points = [self.theory_point()]
        screen = self.screen
        if screen is None:
            screen = 8 if self.remaining() > 2 * 8 * self.trial_cost() + self.costs.hypergrad(self.mode, self.steps) else 0
        if screen and self.n_starts > 1:
            screened = self.screen_population(screen)
            points += [self.encode(t.lr, t.momentum) for t in sorted(screened, key=lambda t: t.value)]
        return points[: self.n_starts]

    def theory_point(self) -> np.ndarray:
        """u of the rate-optimal (η*, β*) for [λ_low, λ_max] (module docstring); the middle of
        the space when the Hessian at θ₀ has no positive curvature."""
        curvature = self.curvature()
        top = curvature.lambda_max
        if not top > 0:
            return self.encode(math.sqrt(self.space.lr_low * self.space.lr_high), 0.5)
        known = curvature.eigenvalues[0] if len(curvature.eigenvalues) == 2 else top / ASSUMED_CONDITION
        low = min(max(known, top / (self.steps / 5.0) ** 2), top)
        return self.encode(*optimal_hyperparameters(low, top))

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
        """Evaluate the meta-gradient at the start's next proposal; accept it or halve the step."""
        proposal = start.u if start.grad is None else self.proposal(start)
        value, grad, exploded = self.meta_gradient(proposal, start.index)
        if start.grad is None and exploded:  # a start that blows up: retry it at half the learning rate
            start.u = self.project(start.u - np.array([math.log(2.0), 0.0]))
        elif start.grad is None or (not exploded and value < start.value):
            self.accept(start, proposal, value, grad)
        else:
            start.step /= 2.0

    def meta_gradient(self, u: np.ndarray, start: int = 0) -> tuple[float, np.ndarray, bool]:
        """Charge, compute and record one meta-gradient: (log ℓ_val, ∇_u log ℓ_val, exploded)."""
        lr, momentum = self.decode(u)
        spent = self.costs.hypergrad(self.mode, self.steps)
        self.charge(spent)
        began = time.perf_counter()
        hg = hypergrad(self.objective.train_loss, self.objective.val_loss, self.params, lr, momentum,
                       self.steps, self.batches, mode=self.mode, costs=self.costs)
        trial = self.record(lr, momentum, hg.value, spent, time.perf_counter() - began,
                            growth_rate=hg.growth_rate, dvalue_dlr=hg.lr, dvalue_dmomentum=hg.momentum, start=start)
        grad = np.array([hg.lr * lr, -hg.momentum * (1.0 - momentum)]) / max(hg.value, 1e-300)
        exploded = trial.diverged or not np.isfinite(grad).all() or hg.amplification > self.max_amplification
        return (math.inf if trial.diverged else math.log(max(hg.value, 1e-300))), grad, exploded

    def accept(self, start: Start, u: np.ndarray, value: float, grad: np.ndarray) -> None:
        """Move the start to u and update the outer optimiser's state with the new gradient."""
        if self.outer == "bfgs":
            if start.grad is None:
                start.inverse_hessian = np.eye(2) * self.meta_lr / max(float(np.linalg.norm(grad)), 1e-12)
            else:
                start.inverse_hessian = bfgs_update(start.inverse_hessian, u - start.u, grad - start.grad,
                                                   first=start.iterations == 1)
        else:
            _, start.first_moment, start.second_moment = adam_direction(start, grad)
        start.u, start.value, start.grad, start.step = u, value, grad, 1.0
        start.iterations += 1

    def proposal(self, start: Start) -> np.ndarray:
        """The next point: u − step · H ∇ (BFGS) or u − step · meta_lr · m̂/(√v̂ + ε) (Adam)."""
        if self.outer == "bfgs":
            direction = start.inverse_hessian @ start.grad
        else:
            t = start.iterations
            direction = self.meta_lr * (start.first_moment / (1 - 0.9**t)) / (
                np.sqrt(start.second_moment / (1 - 0.999**t)) + 1e-8)
        return self.project(start.u - start.step * direction)
