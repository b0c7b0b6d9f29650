"""``metagrad`` (ours): descend meta-gradients of log ℓ_val(θ_T) in u = (log η, log(1 − β)).

Why these coordinates and this meta-objective: u maps the open box η > 0, β < 1 onto ℝ²
and makes equal steps equal *relative* changes of η and of 1 − β, which is how the
dynamics respond (ρ depends on ηλ and on √β). log ℓ_val turns the product-like decay
ℓ_T ≈ C ρ^{2T} into a sum, so its gradient does not vanish by orders of magnitude as
the loss falls (on the quadratic, from 10³ to 10⁻¹³). Chain rule:
∂ log ℓ/∂u₀ = η ∂ℓ/∂η / ℓ and ∂ log ℓ/∂u₁ = −(1 − β) ∂ℓ/∂β / ℓ.

The outer optimisation lives in :mod:`metatune.tuners.chains` (shared with the Ray Tune
searcher). Outer optimiser: BFGS by default (``outer="bfgs"``; Nocedal & Wright, Alg. 6.1), its first
step ``meta_lr`` long along −∇, its inverse Hessian rescaled by sᵀy/yᵀy after the first
accepted step; or Adam (``outer="adam"``, steps of ``meta_lr`` per coordinate). Each
meta-gradient costs a whole training run, so few are taken: on the quadratic, BFGS reaches
2× the finite-horizon limit in 5 where Adam stalls at 7× (BENCHMARKS.md).

Stability guard: λ_max of the training loss at θ₀ (Lanczos, charged to the budget) caps
η at (1 − margin) · 2(1 + β)/λ_max. The rate-optimal η* = 4/(√L + √μ)² (L = λ_max, μ = λ_min)
sits at κ/(κ + 1) of the cap at its β*, so the default margin is small. A step is accepted only if its loss is
lower than the last accepted one and its run neither diverged nor amplified the
sensitivities more than ``max_amplification``; otherwise the tuner stays at the last
accepted point and halves its step. Starts: the rate-optimal (η*, β*) of [λ_low, λ_max],
λ_low = max(λ_min, λ_max/κ_T), κ_T = (T/5)² the largest condition number T steps can
resolve (λ_max/100 where λ_min is unknown), plus the best of a screening population when
the budget affords it. The starts take outer steps in turn until the budget is spent.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from metatune import checks
from metatune.objectives import Objective
from metatune.stability import critical_lr, optimal_hyperparameters
from metatune.tuners.base import Tuner, is_diverged
from metatune.tuners.chains import OUTER, MetagradChains, check_options, decode, encode, project
from metatune.tuners.evaluation import Outcome, Proposal

ASSUMED_CONDITION = 100.0
"""κ assumed for the starting point when λ_min at θ₀ is unknown or not positive."""

__all__ = ["ASSUMED_CONDITION", "OUTER", "MetagradTuner"]


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
        starts: how many starts take outer steps (on Ray, as concurrent chains).
        max_amplification: reject a step whose sensitivities grew more than this.
    """

    name = "metagrad"

    def __init__(self, objective: Objective, *, mode: str = "forward", outer: str = "bfgs",
                 meta_lr: float = 0.03, margin: float = 1e-4, guard: bool = True, screen: int | None = None,
                 starts: int = 2, max_amplification: float = 1e8, **kwargs: Any) -> None:
        super().__init__(objective, **kwargs)
        mode = checks.choice("mode", mode, ("forward", "reverse"))
        outer, meta_lr, max_amplification = check_options(outer, meta_lr, max_amplification)
        margin = checks.fraction("margin", margin, note="of the critical lr the guard keeps below")
        guard = checks.flag("guard", guard)
        screen = checks.integer("screen", screen, low=0, optional=True, note="the screening population")
        starts = checks.positive_int("starts", starts, note="chains taking outer steps")
        self.mode, self.outer, self.meta_lr, self.margin = mode, outer, meta_lr, margin
        self.screen, self.n_starts, self.max_amplification = screen, starts, max_amplification
        self.guard = guard
        self.chains: MetagradChains | None = None
        self.screening: Proposal | None = None

    # -- coordinates and guard ----------------------------------------------------------------

    decode = staticmethod(decode)
    encode = staticmethod(encode)

    def lr_cap(self, momentum: float) -> float:
        """The largest η the guard and the space allow at β."""
        if not self.guard:
            return self.space.lr_high
        guard = (1.0 - self.margin) * critical_lr(self.curvature().lambda_max, momentum)
        return min(self.space.lr_high, guard)

    def project(self, u: np.ndarray) -> np.ndarray:
        """Clip u into the space and under the stability guard."""
        return project(u, self.space, self.lr_cap)

    def make_chains(self, starts: list[tuple[float, float]]) -> MetagradChains:
        return MetagradChains(self.space, starts, outer=self.outer, meta_lr=self.meta_lr, lr_cap=self.lr_cap,
                              max_amplification=self.max_amplification)

    # -- ask / tell -----------------------------------------------------------------------------

    def prepare(self) -> float:
        """λ_max at θ₀ (the guard and the theory start); decide on screening."""
        cost = self.curvature().gradient_evals
        screen = self.screen
        if screen is None:
            affordable = self.budget - cost > 2 * 8 * self.trial_cost() + self.hypergrad_cost()
            screen = 8 if affordable else 0
        if screen and self.n_starts > 1:
            self.screening = self.points(self.screen_points(screen))
        else:
            self.chains = self.make_chains([decode(self.theory_point())])
        return cost

    def hypergrad_cost(self) -> float:
        return self.context.hypergrad_cost(self.mode)

    def ask(self, remaining: float) -> Proposal | None:
        if self.screening is not None:
            proposal, self.screening = self.screening, None
            if proposal.cost <= remaining + 1e-9:
                return proposal
            self.chains = self.make_chains([decode(self.theory_point())])
        if self.chains is None or self.hypergrad_cost() > remaining + 1e-9:
            return None
        step = self.chains.ask()
        if step is None:
            return None
        return Proposal(((step.lr, step.momentum),), self.hypergrad_cost(), self.mode, step.start, step)

    def tell(self, proposal: Proposal, outcomes: list[Outcome]) -> None:
        if proposal.hypergrad is None:  # the screening population: its best points become starts
            kept = [o for o in outcomes if o.error is None and not is_diverged(o.value, self.initial_value)]
            best = sorted(kept, key=lambda o: o.value)
            starts = [decode(self.theory_point())] + [(o.lr, o.momentum) for o in best]
            self.chains = self.make_chains(starts[: self.n_starts])
            return
        outcome, metrics, failed = outcomes[0], outcomes[0].metrics, outcomes[0].error is not None
        self.chains.tell(proposal.step, math.nan if failed else outcome.value, metrics.get("dvalue_dlr", math.nan),
                         metrics.get("dvalue_dmomentum", math.nan), metrics.get("amplification", math.inf),
                         diverged=failed or is_diverged(outcome.value, self.initial_value))

    # -- starting points ------------------------------------------------------------------------

    def theory_point(self) -> np.ndarray:
        """u of the rate-optimal (η*, β*) for [λ_low, λ_max] (module docstring); the middle of
        the space when the Hessian at θ₀ has no positive curvature."""
        curvature = self.curvature()
        top = curvature.lambda_max
        if not top > 0:
            return self.project(encode(math.sqrt(self.space.lr_low * self.space.lr_high), 0.5))
        known = curvature.eigenvalues[0] if len(curvature.eigenvalues) == 2 else top / ASSUMED_CONDITION
        low = min(max(known, top / (self.steps / 5.0) ** 2), top)
        return self.project(encode(*optimal_hyperparameters(low, top)))

    def screen_points(self, size: int) -> list[tuple[float, float]]:
        """``size`` Sobol points of the guarded space (η log-uniform under the cap at each β)."""
        from scipy.stats import qmc

        unit = qmc.Sobol(d=2, scramble=True, seed=self.seed).random(size)
        space = self.space
        momenta = space.momentum_low + unit[:, 1] * (space.momentum_high - space.momentum_low)
        points = []
        for fraction, momentum in zip(unit[:, 0], momenta):
            low, high = math.log(space.lr_low), math.log(max(self.lr_cap(momentum), space.lr_low))
            points.append((math.exp(low + fraction * (high - low)), float(momentum)))
        return points
