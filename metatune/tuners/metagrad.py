"""``metagrad`` (ours): descend meta-gradients of log ℓ_val(θ_T) in u = (log η, log(1 − β)).

Meta-objective. The tuner treats the validation loss after T steps of heavy ball,
ℓ_val(θ_T(η, β)), as a function of the hyperparameters and descends it with its
meta-gradient ∂ℓ_val/∂(η, β), obtained by differentiating through the unrolled run
(:mod:`metatune.hypergrad`: forward, reverse or checkpointed reverse, whichever ``mode``
picks). It descends log ℓ_val in u = (log η, log(1 − β)). u maps the open box η > 0, β < 1
onto ℝ² and makes equal steps equal *relative* changes of η and of 1 − β, which is how the
dynamics respond (the rate ρ depends on ηλ and on √β). log ℓ turns the product-like decay
ℓ_T ≈ C ρ^{2T} into a sum, so its gradient keeps its scale while ℓ falls by orders of
magnitude. Chain rule: ∂ log ℓ/∂u₀ = η ∂ℓ/∂η / ℓ and ∂ log ℓ/∂u₁ = −(1 − β) ∂ℓ/∂β / ℓ.
Over G parameter groups (``groups``) u holds one (log η, log(1 − β)) per group, u ∈ ℝ^{2G}.

Curvature at θ₀. One Lanczos run on the training loss's Hessian at θ₀, started at ∇ℓ(θ₀)
and charged to the budget, gives L = λ_max, the smallest Ritz value λ_min (θ₀ counts as
convex where it is positive), and Ritz values θⱼ and weights wⱼ: the Gauss quadrature of the
gradient's spectral measure.

Stability guard. Heavy ball on curvature λ is stable for η < 2(1 + β)/λ. The screening
points and the theory start are kept at η ≤ (1 − margin) · 2(1 + β)/λ_max; the chains at the
same cap where θ₀ is convex and at :data:`CATAPULT` times it where it is not: a network
trained above θ₀'s critical lr first sharpens, then flattens until the run converges (the
catapult phase), while on a quadratic the curvature is θ₀'s everywhere. The rate-optimal
η* = 4/(√L + √μ)² of [μ, L] sits at κ/(κ + 1) of the cap at its β*, κ = L/μ, so the
default margin is small. ``guard=False`` lifts the caps; ``"auto"`` lifts them where θ₀ is not
convex.

Theory start, from the Lanczos run alone (nothing comes from the objective's
``optimum``):

- Where θ₀ is convex and the objective full-batch, the minimiser of ℓ_T on the local
  quadratic model (:func:`horizon_optimum`): ℓ_T − ℓ* = ½ Σⱼ (wⱼ/θⱼ) r_T(θⱼ)², r_T heavy
  ball's residual polynomial (:func:`~metatune.stability.horizon_loss`), searched on a
  :data:`HORIZON_GRID`² grid in (log η, β) under the cap and three zooms. The finite horizon
  matters: the rate-optimal point puts λ_min and λ_max both at a double root of r_T, where
  ℓ_T grows like T² ρ^{2T}, far above the best ℓ_T that T steps reach.
- Elsewhere (minibatch noise, or negative curvature, where the model does not hold) the
  rate-optimal (η*, β*) = (4/(√L + √μ)², ((√κ − 1)/(√κ + 1))²) of [μ, L], κ = L/μ, with
  μ = max(λ_low, L/κ_T): κ_T = (T/5)² is the largest condition number T steps can resolve;
  λ_low is λ_min where θ₀ is convex and L/:data:`NEGATIVE_CURVATURE_CONDITION` where it is
  not; on minibatch objectives μ ≥ L/:data:`ASSUMED_CONDITION`, since high momentum
  amplifies gradient noise.
- Where the Hessian at θ₀ has no positive curvature at all, the geometric middle of the η
  range at β = 0.5.

Screening. When 8 screening runs take at most half the budget, a population of the theory
point and 8 scrambled Sobol points (each η log-uniform under the cap at its β) is trained
at once and the ``starts`` chains begin at its lowest points (at most one chain per two
meta-gradients the rest of the budget buys): the theory point competes instead of being
assumed good. Where θ₀ has negative curvature the model behind the theory point is only a
guess, so small budgets screen too, with 4, 2 or 1 points, the most that leave two
meta-gradients; where θ₀ is convex they do not, and the budget goes to meta-gradients
from the theory point. In a per-group space every group starts at the same theory point
and the screening points differ per group.

Schedules. Over a schedule of K knots (``schedule=K``) u holds (log η, log(1 − β)) per group
and knot, 2·K·G coordinates, each knot's η capped at its β. The screen and the theory point
are constant schedules (one vmapped population where the space has no groups) and each chain
starts at the best: today's best constant point, so the learned schedule starts no worse
than the constant tuner, and the chains then move all 2·K·G values at once. (Searching
coarse to fine instead — 1, then 2, then 8 knots, each level from the last one's best —
did worse on mlp-digits, BENCHMARKS.md.) A meta-gradient per knot costs what a constant one
costs in reverse mode (one backward pass for any number of hyperparameters), which
``mode="auto"`` picks wherever it fits in memory; forward mode would carry 2·K·G tangents.

Outer steps (:mod:`metatune.tuners.chains`, shared with the Ray Tune searcher). Each
meta-gradient costs 2–4 training runs, so few are taken and each must count.
The chain with the lowest accepted loss takes the next step, so the budget follows the best
chain. BFGS by default (``outer="bfgs"``; Nocedal & Wright, Alg. 6.1): the first step goes
along −∇ log ℓ, log 2/‖∇‖ long (halving ℓ to first order), within [``meta_lr``, 1]; the
inverse Hessian is rescaled to (sᵀy/yᵀy) I after the first accepted step, and updates with
yᵀs ≤ 0 are skipped. Or Adam (``outer="adam"``, steps of ``meta_lr`` per coordinate). A
step is accepted only if its loss is lower than the last accepted one and its run neither
diverged nor amplified the sensitivities more than ``max_amplification``; otherwise the
chain stays at its last accepted point and shortens the step to the minimiser of the cubic
matching log ℓ and its slope at both ends, within [0.1, 0.5] of it, or by half where the
run failed (:func:`metatune.tuners.chains.backtrack`). A chain whose first point explodes
starts again at half its η.

Line search at the budget's end. A meta-gradient's gradient is worth its price only where a
later step uses it. Once the rest of the budget affords no meta-gradient followed by one
run, it goes to value-only runs along the best chain's next step direction
(:meth:`MetagradTuner.line_search`, :func:`metatune.tuners.chains.next_fraction`): first at
the step itself, 3× farther while the loss falls, back by the quadratic through the slope
where it rose, and bisection in log t once the minimum is bracketed.

Measured figures, and the alternatives tried, are in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from metatune import checks
from metatune.objectives import Objective, SearchSpace
from metatune.stability import critical_lr, horizon_loss, optimal_hyperparameters
from metatune.point import Point
from metatune.schedule import KNOTS
from metatune.tuners.base import Tuner, is_diverged
from metatune.tuners.chains import OUTER, MetagradChains, check_options, point_at, project
from metatune.tuners.evaluation import Outcome, Proposal
from metatune.tuners.records import BUDGET_SLACK, ChainStep

ASSUMED_CONDITION = 100.0
"""The largest κ the starting point assumes on minibatch objectives, whatever Lanczos finds:
minibatch noise hides the low end of the spectrum (λ_min ≈ 10⁻⁴ λ_max on logistic-digits would
give β* ≈ 0.9, far more momentum than a noisy run of T steps can use); κ = 100 gives β* ≈ 0.67."""

NEGATIVE_CURVATURE_CONDITION = 30.0
"""κ the theory start assumes where θ₀ has negative curvature (λ_min of the Lanczos run ≤ 0,
every network in the bench): the local quadratic model says nothing of the low end there, and
a short run on a network wants less momentum than κ = 100 gives (β* = 0.67; TPE's best on
mlp-digits lies at β = 0.1–0.3). κ = 30 gives β* = ((√30 − 1)/(√30 + 1))² = 0.48; the
comparison with 10 and 100 that chose it is in BENCHMARKS.md."""

CATAPULT = 2.0
"""How far above θ₀'s critical lr the chains may step where θ₀ is not convex (screening and
the theory start stay under it). A network's curvature is not θ₀'s: trained above 2/λ_max
it first grows, then the sharpness falls until the run converges (the catapult phase,
Lewkowycz et al. 2020, up to about 4/λ_max, twice the critical lr, for wide networks), so
the best η often lies above θ₀'s critical lr (TPE's best on mlp-digits: 1.5× it). Runs that
explode there are rejected by the back-off. On a quadratic the curvature is θ₀'s
everywhere, and there chains past the critical lr only diverge (6 of 20 steps on the
κ = 100 test quadratic), so where Lanczos finds θ₀ convex the chains keep the 1× cap."""

SCREEN = 8
"""Screening points besides the theory point where the budget affords them twice over: with
the theory point a population of 9, one vmapped run."""
SMALL_SCREENS = (4, 2, 1)
"""Smaller screens tried, largest first, where θ₀ is not convex and SCREEN does not fit."""

__all__ = ["ASSUMED_CONDITION", "CATAPULT", "HORIZON_GRID", "NEGATIVE_CURVATURE_CONDITION", "OUTER", "MetagradTuner",
           "horizon_optimum"]


class MetagradTuner(Tuner):
    """Gradient-based tuning of (η, β) through the unrolled run; see the module docstring.

    Args:
        mode: hypergradient mode: "auto" (reverse, checkpointed or forward, whichever is
            cheapest among those whose memory fits; :mod:`metatune.hypergrad.auto`),
            "forward" or "reverse".
        outer: "bfgs" or "adam".
        meta_lr: shortest first step in u (0.03 ≈ a 3 % change of η or of 1 − β); Adam's step.
        margin: the guard keeps the screening points and the theory start at
            η ≤ (1 − margin) · critical lr at θ₀, and the chains at :data:`CATAPULT` times
            that where θ₀ is not convex (at the same cap where it is).
        guard: True (the default) keeps those caps; False lifts them (the back-off still
            rejects runs that explode); "auto" keeps them where θ₀ is convex (λ_min > 0 found)
            and lifts them where θ₀ has negative curvature. Networks often train stably above
            the critical lr of θ₀, whose curvature the first steps reduce, and the chains may
            go there (:data:`CATAPULT`); screening runs above it diverge on some networks, so
            the default keeps the caps.
        screen: screening points besides the theory point (None: :meth:`default_screen`).
        starts: how many starts take outer steps (on Ray, as concurrent chains).
        max_amplification: reject a step whose sensitivities grew more than this.
    """

    name = "metagrad"
    schedule_shapes = (KNOTS,)  # a fixed shape's warm-up and final fractions have no meta-gradient here

    def __init__(self, objective: Objective, *, mode: str = "auto", outer: str = "bfgs",
                 meta_lr: float = 0.03, margin: float = 1e-4, guard: bool | str = True, screen: int | None = None,
                 starts: int = 2, max_amplification: float = 1e8, **kwargs: Any) -> None:
        super().__init__(objective, **kwargs)
        mode = checks.choice("mode", mode, ("auto", "forward", "reverse"))
        outer, meta_lr, max_amplification = check_options(outer, meta_lr, max_amplification)
        margin = checks.fraction("margin", margin, note="of the critical lr the guard keeps below")
        guard = checks.flag("guard", guard, also=("auto",))
        screen = checks.integer("screen", screen, low=0, optional=True, note="the screening population")
        starts = checks.positive_int("starts", starts, note="chains taking outer steps")
        self.outer, self.meta_lr, self.margin = outer, meta_lr, margin
        self.plan = self.context.plan(mode)
        self.mode = self.plan.mode
        self.screen, self.n_starts, self.max_amplification = screen, starts, max_amplification
        self.guard = guard
        self.chains: MetagradChains | None = None
        self.screening: Proposal | None = None

    # -- coordinates and guard ----------------------------------------------------------------

    def lr_cap(self, momentum: float, factor: float = 1.0) -> float:
        """The largest η the guard (times ``factor``) and the space allow at β."""
        if not self.guarded():
            return self.space.lr_high
        guard = factor * (1.0 - self.margin) * critical_lr(self.curvature().lambda_max, momentum)
        return min(self.space.lr_high, guard)

    def chain_cap(self, momentum: float) -> float:
        """The largest η a chain may step to at β: :meth:`lr_cap`, times :data:`CATAPULT` where
        θ₀ is not convex."""
        return self.lr_cap(momentum, 1.0 if self.convex() else CATAPULT)

    def convex(self) -> bool:
        """Whether Lanczos found θ₀'s Hessian positive definite (λ_min > 0)."""
        return math.isfinite(self.curvature().lambda_min)

    def guarded(self) -> bool:
        """Whether η is capped at θ₀'s critical lr ("auto": where θ₀ is convex)."""
        return self.guard if isinstance(self.guard, bool) else self.convex()

    def project(self, u: np.ndarray) -> np.ndarray:
        """Clip u into the space and under the stability guard."""
        return project(u, self.space, self.lr_cap)

    def make_chains(self, starts: list[Point], values: list[float] | None = None) -> MetagradChains:
        return MetagradChains(self.space, starts, outer=self.outer, meta_lr=self.meta_lr, lr_cap=self.chain_cap,
                              max_amplification=self.max_amplification, groups=self.groups, values=values)

    def decode_point(self, u: np.ndarray) -> Point:
        """The constant point at u (:func:`~metatune.tuners.chains.point_at`, in this space's groups)."""
        return point_at(u, self.space, self.groups)

    def chain_start(self, point: Point) -> Point:
        """A constant point as a chain's start in this space: over a schedule of K knots, the
        constant schedule at it (each knot at the point's (η, β))."""
        return point if point.shape == self.shape else point.with_shape(self.shape)

    # -- ask / tell -----------------------------------------------------------------------------

    def prepare(self) -> float:
        """λ_max at θ₀ (the guard and the theory start); decide on screening."""
        cost = self.curvature().gradient_evals
        screen = self.default_screen(self.budget - cost) if self.screen is None else self.screen
        if screen:  # the theory point competes with the screened ones
            screened = [self.decode_point(self.theory_point()), *self.screen_points(screen)]
            self.screening = self.points([self.chain_start(p) for p in screened])  # in the job's shape
        else:
            self.chains = self.make_chains([self.chain_start(self.decode_point(self.theory_point()))])
        return cost

    def default_screen(self, budget: float) -> int:
        """Screening points besides the theory point: :data:`SCREEN` when they take at most
        half the budget; where θ₀ has negative curvature (the local quadratic model behind the
        theory point is only a guess) also one of :data:`SMALL_SCREENS`, the most that leave
        two meta-gradients; else 0 (convex at θ₀: the budget goes to meta-gradients from the
        theory point)."""
        trial, hypergrad = self.trial_cost(), self.hypergrad_cost()
        if budget > 2 * SCREEN * trial + hypergrad:
            return SCREEN
        if math.isfinite(self.curvature().lambda_min):
            return 0
        return next((size for size in SMALL_SCREENS if budget - (size + 1) * trial >= 2 * hypergrad), 0)

    def chain_count(self) -> int:
        """``starts``, but at most one chain per two meta-gradients the rest of the budget buys
        (a chain's first meta-gradient only measures where it stands)."""
        return max(1, min(self.n_starts, int(self.remaining() // self.hypergrad_cost()) // 2))

    def hypergrad_cost(self) -> float:
        return self.context.hypergrad_cost(self.plan, 2 * self.slots())

    def ask(self, remaining: float) -> Proposal | None:
        if self.screening is not None:
            proposal, self.screening = self.screening, None
            if proposal.cost <= remaining + BUDGET_SLACK:
                return proposal
            self.chains = self.make_chains([self.chain_start(self.decode_point(self.theory_point()))])
        if self.chains is None:
            return None
        if self.line_search(remaining):
            step = self.chains.ask(line=True)
            return None if step is None else Proposal((step.point,), self.trial_cost(), None, step.start, step)
        if self.hypergrad_cost() > remaining + BUDGET_SLACK:
            return None
        step = self.chains.ask()
        if step is None:
            return None
        return Proposal((step.point,), self.hypergrad_cost(), self.mode, step.start, step, self.plan.checkpoint)

    def line_search(self, remaining: float) -> bool:
        """Whether the rest of the budget goes to value-only runs along the best chain's step
        direction: once it affords no meta-gradient followed by a run that could use its
        gradient (a meta-gradient costs 2–4 runs, and the last one's gradient would be
        paid for and never used), provided a chain has a gradient to follow."""
        trial = self.trial_cost()
        if remaining + BUDGET_SLACK >= self.hypergrad_cost() + trial or remaining + BUDGET_SLACK < trial:
            return False
        return any(s.grad is not None and not s.done for s in self.chains.starts)

    def tell(self, proposal: Proposal, outcomes: list[Outcome]) -> ChainStep | None:
        """The screening population's best points (constant) become the chains' starts (over a
        schedule, the constant schedules at them); a chain's point
        is told to its chain, which accepts it or backs off (returned as the trial's
        :class:`~metatune.tuners.records.ChainStep`)."""
        if proposal.step is None:  # the screening population
            kept = [o for o in outcomes if o.error is None and not is_diverged(o.value, self.initial_value)]
            best = sorted(kept, key=lambda o: o.value)[:self.chain_count()]
            self.chains = self.make_chains([self.chain_start(o.point) for o in best], [o.value for o in best]) \
                if best else self.make_chains([self.chain_start(self.decode_point(self.theory_point()))])
            return None
        outcome, step = outcomes[0], proposal.step
        failed = outcome.error is not None or is_diverged(outcome.value, self.initial_value)
        gradient = None if step.line is not None else outcome.gradient()
        accepted = self.chains.tell(step, math.nan if failed else outcome.value, gradient, diverged=failed)
        return ChainStep(step.start, accepted, gradient, step.line)

    # -- starting points ------------------------------------------------------------------------

    def theory_point(self) -> np.ndarray:
        """u of the start the local quadratic model at θ₀ recommends (module docstring): where
        θ₀ is convex and the objective full-batch, the (η, β) that minimise the model's ℓ_T
        (:func:`horizon_optimum`); otherwise the rate-optimal (η*, β*) for [λ_low, λ_max]; the
        middle of the space when the Hessian at θ₀ has no positive curvature."""
        curvature = self.curvature()
        top = curvature.lambda_max
        if not top > 0:
            lr, momentum = math.sqrt(self.space.lr_low * self.space.lr_high), 0.5
        elif self.convex() and self.batches is None and curvature.nodes:
            lr, momentum = horizon_optimum(curvature.nodes, curvature.weights, self.steps, self.space,
                                           self.lr_cap)
        else:
            known = curvature.lambda_min if self.convex() else top / NEGATIVE_CURVATURE_CONDITION
            floor = top / (self.steps / 5.0) ** 2  # the slowest mode T steps can resolve
            if self.batches is not None:  # minibatches: assume no more than ASSUMED_CONDITION
                floor = max(floor, top / ASSUMED_CONDITION)
            low = min(max(known, floor), top)
            lr, momentum = optimal_hyperparameters(low, top)
        every = max(len(self.groups), 1)  # every group starts at the same (η, β)
        return self.project(np.array([math.log(lr)] * every + [math.log(1.0 - momentum)] * every))

    def screen_points(self, size: int) -> list[Point]:
        """``size`` Sobol points of the guarded space (each group's η log-uniform under the cap
        at its β), constant over the run: a schedule's chains start at the best constant
        point, so a learned schedule never starts worse than the constant tuner's screen."""
        from scipy.stats import qmc

        every, space = max(len(self.groups), 1), self.space
        unit = qmc.Sobol(d=2 * every, scramble=True, seed=self.seed).random(size)
        points = []
        for row in unit:
            momenta = space.momentum_low + row[every:] * (space.momentum_high - space.momentum_low)
            lrs = [math.exp(math.log(space.lr_low) + f * (math.log(max(self.lr_cap(m), space.lr_low))
                                                           - math.log(space.lr_low))) for f, m in zip(row[:every], momenta)]
            points.append(Point(tuple(lrs), tuple(float(m) for m in momenta), self.groups))
        return points


HORIZON_GRID = 64
"""Points per side of the (log η, β) grid :func:`horizon_optimum` searches, and of each zoom."""


def horizon_optimum(nodes: tuple[float, ...], weights: tuple[float, ...], steps: int, space: SearchSpace,
                    lr_cap: Callable[[float], float], zooms: int = 3) -> tuple[float, float]:
    """The (η, β) of the space, η ≤ ``lr_cap(β)``, that minimise the local quadratic model's
    ℓ_T (:func:`~metatune.stability.horizon_loss`): a :data:`HORIZON_GRID`² grid in (log η, β),
    then ``zooms`` grids ±3 cells around the best so far. Where Lanczos resolves the
    spectrum this is the finite-horizon optimum itself; the rate-optimal point sits where
    critical damping at λ_min and at λ_max meet, on a knife edge whose ℓ_T is up to 8·10⁵
    times it on the bench's quadratics (BENCHMARKS.md)."""
    lr_limits = (math.log(space.lr_low), math.log(space.lr_high))
    momentum_limits = (space.momentum_low, space.momentum_high)
    lr_box, momentum_box = lr_limits, momentum_limits
    best = (math.inf, math.exp(sum(lr_limits) / 2), sum(momentum_limits) / 2)
    for _ in range(zooms + 1):
        lr_axis = np.exp(np.linspace(*lr_box, HORIZON_GRID))
        momentum_axis = np.linspace(*momentum_box, HORIZON_GRID)
        lrs, momenta = (a.ravel() for a in np.meshgrid(lr_axis, momentum_axis))
        values = horizon_loss(lrs, momenta, nodes, weights, steps)
        caps = np.array([lr_cap(float(m)) for m in momentum_axis])
        values[lrs > np.repeat(caps, HORIZON_GRID)] = np.inf
        index = int(np.argmin(values))
        if values[index] < best[0]:
            best = (float(values[index]), float(lrs[index]), float(momenta[index]))
        lr_box = _zoom(math.log(best[1]), lr_box, lr_limits)
        momentum_box = _zoom(best[2], momentum_box, momentum_limits)
    return best[1], best[2]


def _zoom(centre: float, box: tuple[float, float], limits: tuple[float, float]) -> tuple[float, float]:
    """±3 grid cells of ``box`` around ``centre``, within ``limits``."""
    half = 3 * (box[1] - box[0]) / HORIZON_GRID
    return max(centre - half, limits[0]), min(centre + half, limits[1])
