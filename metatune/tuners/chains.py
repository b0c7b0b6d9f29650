"""metagrad's outer optimisation: chains of (η, β) that descend meta-gradients, as ask/tell.

No torch and no objective here: a chain proposes a point, is told the validation loss and
its meta-gradient there, and accepts the point or backs off. The in-process
:class:`~metatune.tuners.metagrad.MetagradTuner` and the Ray Tune searcher
(:class:`metatune.distributed.MetagradSearch`) drive the same chains.

Coordinates u = (log η, log(1 − β)) map the open box η > 0, β < 1 onto ℝ² and make equal
steps equal *relative* changes of η and of 1 − β; the chains descend log ℓ_val, whose
u-gradient is ∂ log ℓ/∂u₀ = η ∂ℓ/∂η / ℓ, ∂ log ℓ/∂u₁ = −(1 − β) ∂ℓ/∂β / ℓ. Over G parameter
groups u = (log η_1 … log η_G, log(1 − β_1) … log(1 − β_G)) ∈ ℝ^{2G}
(:meth:`~metatune.point.Point.to_u`) and the same formulas hold per group; over a schedule
of K knots, per group and knot (u ∈ ℝ^{2GK}), each knot's η capped at its own β.

Outer step: BFGS (Nocedal & Wright, Alg. 6.1) with its first step along −∇ as long as
halves ℓ to first order (:func:`first_step_length`, at least ``meta_lr``) and the inverse
Hessian rescaled by sᵀy/yᵀy after the first accepted step, or Adam (:mod:`metatune.tuners.adam`).
A proposal is accepted only if its loss is lower than the last accepted one and its run
neither diverged nor amplified the sensitivities more than ``max_amplification``;
otherwise the chain stays and shortens its step: to the minimiser of the cubic that
matches log ℓ and its slope at both ends (:func:`backtrack`, within [0.1, 0.5] of it), or
by half where the run failed. A start whose first point explodes is
retried at half its learning rate. :meth:`MetagradChains.tell` returns whether the chain
accepted the point: that decision is made here only, and recorded with the trial.

A meta-gradient costs 2–4 runs, and its gradient is worth that only where a later step uses
it. For the budget's tail the tuner asks for value-only points instead (``ask(line=True)``):
a line search along the direction of the best chain's next outer step (:func:`next_fraction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from metatune import checks
from metatune.errors import invalid
from metatune.objectives import SearchSpace
from metatune.point import MetaGradient, Point
from metatune.schedule import Shape
from metatune.tuners.adam import AdamState, adam_direction, adam_init, adam_update
from metatune.tuners.records import LOG_FLOOR

OUTER = ("bfgs", "adam")


def check_options(outer: str, meta_lr: float, max_amplification: float) -> tuple[str, float, float]:
    """The outer optimiser's options, checked (shared by the tuner, the chains and the Ray searcher)."""
    return (checks.choice("outer", outer, OUTER),
            checks.positive("meta_lr", meta_lr, note="the shortest first step in (log lr, log(1 - momentum))"),
            checks.number("max_amplification", max_amplification, low=1.0, low_open=True, finite=False))


def check_starts(starts: list[Point]) -> list[Point]:
    """At least one point, each with valid learning rates and momenta."""
    if isinstance(starts, (str, bytes)) or not isinstance(starts, (list, tuple)) or not starts:
        raise invalid("starts", starts, "a non-empty list of Points")
    for i, start in enumerate(starts):
        checks.instance(f"starts[{i}]", start, Point, "a metatune.point.Point")
        for lr, momentum in start.pairs():
            checks.learning_rate(f"starts[{i}].lr", lr)
            checks.momentum(f"starts[{i}].momentum", momentum)
    return list(starts)


def log_loss(value: float) -> float:
    """log ℓ, finite for ℓ = 0."""
    return math.log(max(value, LOG_FLOOR))


def log_loss_gradient(point: Point, value: float, gradient: MetaGradient) -> np.ndarray:
    """∇_u log ℓ = (η ∂ℓ/∂η, −(1 − β) ∂ℓ/∂β) / ℓ, per group; 0 where ℓ ≤ LOG_FLOOR, where
    :func:`log_loss` is flat. A loss ≥ 0 is least at ℓ = 0, so its true meta-gradient is 0
    there; what the run reports is rounding (κ(1 − cos r) is 0 in float64 for |r| < 1e-8,
    while its slope κ sin r is not), and divided by the floor it would be ~1e280: a step to a
    corner of the space, and overflow in the BFGS update's norms."""
    lrs, momenta = np.array(point.lrs), np.array(point.momenta)
    dlr, dmomentum = np.array(gradient.dlr), np.array(gradient.dmomentum)
    if value <= LOG_FLOOR:
        return np.zeros(len(lrs) + len(momenta))
    return np.concatenate([dlr * lrs, -dmomentum * (1.0 - momenta)]) / value


def project(u: np.ndarray, space: SearchSpace, lr_cap: Callable[[float], float] | None = None) -> np.ndarray:
    """Clip u into the space, and each η under ``lr_cap(β)`` of its group (a stability guard)."""
    half, out = len(u) // 2, np.empty(len(u))
    for g in range(half):
        u1 = float(np.clip(u[half + g], math.log(1.0 - space.momentum_high), math.log(1.0 - space.momentum_low)))
        cap = space.lr_high if lr_cap is None else min(space.lr_high, lr_cap(1.0 - math.exp(u1)))
        out[g], out[half + g] = float(np.clip(u[g], math.log(min(space.lr_low, cap)), math.log(cap))), u1
    return out


def point_at(u: np.ndarray, space: SearchSpace, groups: tuple[str, ...] = (), shape: Shape | None = None) -> Point:
    """The point at u (:meth:`~metatune.point.Point.from_u`), each η and β clipped into the space:
    u inside the box in log coordinates can still land a rounding error outside it
    (exp(log 3.0) = 3.0000000000000004)."""
    point = Point.from_u(u, groups, shape)
    lrs = tuple(min(max(x, space.lr_low), space.lr_high) for x in point.lrs)
    momenta = tuple(min(max(x, space.momentum_low), space.momentum_high) for x in point.momenta)
    return Point(lrs, momenta, point.groups, point.shape)


@dataclass
class Start:
    """One chain: the last accepted u, its log-loss (before the first: the screened one, or
    −inf where unknown) and gradient, and the optimiser's state; ``done`` once no step from u
    stays in the space (a corner or bound the gradient pushes against). ``direction`` and
    ``line``: the value-only line search along the last outer step's direction from u, and
    its (fraction t, log ℓ) so far."""

    u: np.ndarray
    index: int = 0
    value: float = -math.inf
    grad: np.ndarray | None = None
    step: float = 1.0
    inverse_hessian: np.ndarray | None = None
    adam: AdamState | None = None
    iterations: int = 0
    attempts: int = 0
    busy: bool = False
    done: bool = False
    rejections: int = 0
    direction: np.ndarray | None = None
    line: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.adam is None:
            self.adam = adam_init(len(self.u))


STALL = 4
"""Rejected proposals in a row after which a chain yields to the others."""

FIRST_DECREASE = math.log(2.0)
"""The decrease of log ℓ the first step of a chain aims at: halving the loss to first order."""
MAX_FIRST_STEP = 1.0
"""The longest first step in u: η (or 1 − β) changed by a factor e at most."""


def first_step_length(meta_lr: float, gradient_norm: float) -> float:
    """Length of a chain's first step along −∇ log ℓ in u: the step that halves ℓ to first
    order, log 2 / ‖∇‖, kept within [meta_lr, MAX_FIRST_STEP]. Where ℓ_T is steep in u (the
    κ = 1000 quadratics over T = 300 steps: ‖∇‖ = 10³–10⁵ at the first point) that is meta_lr;
    on the networks (‖∇‖ = 0.08–5 on mlp-digits, mlp-regression, logistic-digits) 0.13 to 1."""
    return min(max(meta_lr, FIRST_DECREASE / gradient_norm), max(meta_lr, MAX_FIRST_STEP))


def backtrack(value0: float, slope0: float, value1: float, slope1: float) -> float:
    """The fraction of a rejected step to try next: the minimiser of the cubic through
    φ(0) = value0, φ'(0) = slope0, φ(1) = value1, φ'(1) = slope1 (Nocedal & Wright, eq. 3.59;
    the quadratic through φ(0), φ'(0), φ(1) where the cubic has no minimiser), kept in
    [0.1, 0.5]; 0.5 where the step was not a descent direction."""
    if not slope0 < 0:
        return 0.5
    d1 = slope0 + slope1 - 3.0 * (value1 - value0)
    root = d1 * d1 - slope0 * slope1
    if root >= 0 and math.isfinite(root):
        d2 = math.sqrt(root)
        denominator = slope1 - slope0 + 2.0 * d2
        alpha = 1.0 - (slope1 + d2 - d1) / denominator if denominator > 0 else math.nan
    else:
        alpha = math.nan
    if not math.isfinite(alpha):
        curvature = value1 - value0 - slope0
        alpha = -slope0 / (2.0 * curvature) if curvature > 0 else 0.5
    return min(max(alpha, 0.1), 0.5)


def bfgs_update(inverse_hessian: np.ndarray, s: np.ndarray, y: np.ndarray, first: bool) -> np.ndarray:
    """H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1/(yᵀs); skipped unless yᵀs > 0.

    ``first``: H is first rescaled to (sᵀy/yᵀy) I (Nocedal & Wright, eq. 6.20)."""
    curvature = float(s @ y)
    if curvature <= 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
        return inverse_hessian
    if first:
        inverse_hessian = np.eye(len(s)) * curvature / float(y @ y)
    rho, identity = 1.0 / curvature, np.eye(len(s))
    left = identity - rho * np.outer(s, y)
    return left @ inverse_hessian @ left.T + rho * np.outer(s, s)


@dataclass(frozen=True)
class Step:
    """A chain's proposal: evaluate the meta-gradient of start ``start`` at (lr, momentum), or
    (``line`` = t) only the validation loss there, u = u_chain + t · direction (a line-search point)."""

    start: int
    point: Point
    u: tuple[float, ...]
    line: float | None = None


class MetagradChains:
    """Concurrent chains over a search space; see the module docstring.

    Args:
        space: the box (η, β) stays in.
        starts: the first (η, β) of each chain.
        outer: "bfgs" or "adam"; meta_lr: shortest first step in u (Adam's step).
        lr_cap: ``lr_cap(β)`` the largest η allowed at β (a stability guard), or None.
        max_amplification: reject a step whose sensitivities grew more than this.
        groups: parameter-group prefixes (() for one η and one β); starts and steps then
            carry one value per group (and per knot, as the starts' shape says).

    Example:
        >>> chains = MetagradChains(SearchSpace(), [Point.scalar(0.01, 0.5)])
        >>> step = chains.ask()
        >>> round(step.point.lr, 6), round(step.point.momentum, 6)
        (0.01, 0.5)
        >>> chains.tell(step, value=1.0, gradient=MetaGradient((-10.0,), (0.0,), amplification=1.0))
        True
        >>> chains.ask().point.lr > 0.01
        True
    """

    def __init__(self, space: SearchSpace, starts: list[Point], *, outer: str = "bfgs",
                 meta_lr: float = 0.03, lr_cap: Callable[[float], float] | None = None,
                 max_amplification: float = 1e8, groups: tuple[str, ...] = (),
                 values: list[float] | None = None) -> None:
        checks.instance("space", space, SearchSpace, "a metatune.objectives.SearchSpace")
        checks.function("lr_cap", lr_cap, "a function momentum -> the largest lr allowed", optional=True)
        outer, meta_lr, max_amplification = check_options(outer, meta_lr, max_amplification)
        starts = check_starts(starts)
        self.space, self.outer, self.meta_lr = space, outer, meta_lr
        self.max_amplification, self._lr_cap, self.groups = max_amplification, lr_cap, tuple(groups)
        self.shape = starts[0].shape  # K knots per group: u holds 2·K·G coordinates
        if values is not None and len(values) != len(starts):
            raise invalid("values", values, f"one validation loss per start ({len(starts)})")
        self.starts = [Start(self.project(point.to_u()), index=i) for i, point in enumerate(starts)]
        for start, value in zip(self.starts, values or []):
            start.value = log_loss(value) if value > 0 else -math.inf
        self.known: dict[tuple[float, ...], tuple] = {}  # u → what tell() was told there, with a meta-gradient
        self.values: dict[tuple[float, ...], tuple] = {}  # u → what a line-search tell() was told there

    def project(self, u: np.ndarray) -> np.ndarray:
        """Clip u into the space and under the guard."""
        return project(u, self.space, self._lr_cap)

    def ask(self, line: bool = False) -> Step | None:
        """The next proposal of an idle chain: the one whose loss is lowest (greedy: the budget
        follows the best chain; a chain whose last STALL proposals were all rejected yields to the
        others); None while every chain waits or is done. A start not yet evaluated counts at
        its screened loss (``values``), or first where that is unknown: its first
        meta-gradient only measures where it stands, so a start worse than a chain that still
        descends is not paid for. A point evaluated before is told again from memory instead
        of being proposed.

        ``line``: a value-only point instead, for a budget that affords no meta-gradient whose
        gradient a later step could use: the next point of a line search along the direction
        of the chain's next outer step (:func:`next_fraction`), from chains that have a
        gradient."""
        while idle := [s for s in self.starts
                       if not s.busy and not s.done and (not line or s.grad is not None)]:
            start = min(idle, key=lambda s: (s.rejections >= STALL, s.value, s.attempts, s.index))
            fraction = None
            if line:
                fraction = self._line_fraction(start)
                u = None if fraction is None else self.project(start.u + fraction * start.direction)
            else:
                u = start.u if start.grad is None else self._proposal(start)
            if u is None:
                start.done = True
                continue
            start.busy, start.attempts = True, start.attempts + 1
            step = Step(start.index, point_at(u, self.space, self.groups, self.shape), tuple(float(x) for x in u),
                        fraction)
            memory = self.known.get(step.u) or (self.values.get(step.u) if step.line is not None else None)
            if memory is None:
                return step
            self.tell(step, *memory)  # evaluated before (a bound's corner): free
        return None

    def finished(self) -> bool:
        """Whether every chain is done (no step from its point stays in the space)."""
        return all(s.done for s in self.starts)

    def tell(self, step: Step, value: float, gradient: MetaGradient | None = None, diverged: bool = False) -> bool:
        """Accept ``step`` or back off, given ℓ_val and the meta-gradient at it (value inf or
        NaN, or ``diverged``: the run failed; no gradient: a line-search point). Returns
        whether the chain moved to the step's point."""
        start, u = self.starts[step.start], np.array(step.u)
        start.busy = False
        (self.known if step.line is None else self.values)[step.u] = (value, gradient, diverged)
        failed = diverged or not math.isfinite(value)
        if step.line is not None:  # a line-search point: its loss only; the chain stays at u
            start.line.append((step.line, math.inf if failed else log_loss(value)))
            return False
        if gradient is None:  # the run crashed before its meta-gradient: a failed step
            size = len(step.point.lrs)
            gradient, failed = MetaGradient((math.nan,) * size, (math.nan,) * size, amplification=math.inf), True
        grad = log_loss_gradient(step.point, value, gradient)
        exploded = failed or not np.isfinite(grad).all() or not gradient.amplification <= self.max_amplification
        log_value = math.inf if failed else log_loss(value)
        if start.grad is None and exploded:
            half = len(start.u) // 2  # every η halved
            start.u = self.project(start.u - np.concatenate([np.full(half, math.log(2.0)), np.zeros(half)]))
        elif start.grad is None or (not exploded and log_value < start.value):
            self._accept(start, u, log_value, grad)
            return True
        elif exploded:
            start.step, start.rejections = start.step / 2.0, start.rejections + 1
        else:  # the rejected point's loss and slope place the next try along the same path
            move = u - start.u
            start.step *= backtrack(start.value, float(start.grad @ move), log_value, float(grad @ move))
            start.rejections += 1
        return False

    def _accept(self, start: Start, u: np.ndarray, value: float, grad: np.ndarray) -> None:
        if self.outer == "bfgs":
            if start.grad is None:
                start.inverse_hessian = self._first_inverse_hessian(grad)
            else:
                start.inverse_hessian = bfgs_update(start.inverse_hessian, u - start.u, grad - start.grad,
                                                   first=start.iterations == 1)
        else:
            start.adam = adam_update(start.adam, grad)
        start.u, start.value, start.grad, start.step, start.rejections = u, value, grad, 1.0, 0
        start.iterations += 1

    def _first_inverse_hessian(self, grad: np.ndarray) -> np.ndarray:
        """(L/‖∇‖) I, L = :func:`first_step_length`: BFGS's first step along −∇ is L long."""
        norm = max(float(np.linalg.norm(grad)), 1e-12)
        return np.eye(len(grad)) * first_step_length(self.meta_lr, norm) / norm

    def _line_fraction(self, start: Start) -> float | None:
        """The next t of ``start``'s line search (its direction fixed at the first call: the
        full outer step from u); None when there is none to take."""
        if start.direction is None:
            target = self._target(start)
            if target is None:
                return None
            start.direction = target - start.u
            return start.step
        return next_fraction(start.value, float(start.grad @ start.direction), start.line)

    def _proposal(self, start: Start) -> np.ndarray | None:
        """u + step · (P(u − d) − u) (:meth:`_target`), None where no step promises a decrease."""
        target = self._target(start)
        return None if target is None else self.project(start.u + start.step * (target - start.u))

    def _target(self, start: Start) -> np.ndarray | None:
        """The full step's end P(u − d), d = H ∇ (BFGS) or meta_lr · m̂/(√v̂ + ε) (Adam), P the
        projection: a rejected step is shortened along the projected path u → P(u − d), so one
        that ran into a bound is not proposed again at the same clipped point. Where BFGS's P(u − d) is
        u to first order (it promises less than :data:`MIN_DECREASE` of log ℓ: d points out of
        the space there), H restarts as at a chain's first point; None when even that
        direction promises no more (u is a corner the gradient pushes against)."""
        if self.outer == "bfgs":
            target = self.project(start.u - start.inverse_hessian @ start.grad)
            if _negligible(start.grad, target - start.u):
                start.inverse_hessian = self._first_inverse_hessian(start.grad)
                start.iterations = 1  # the next accepted step rescales H again
                target = self.project(start.u - start.inverse_hessian @ start.grad)
        else:
            target = self.project(start.u - self.meta_lr * adam_direction(start.adam))
        if _negligible(start.grad, target - start.u):
            return None
        return target


MIN_DECREASE = 1e-3
"""A chain's full step must promise at least this decrease of log ℓ to first order (0.1 % of
ℓ), or the chain is done there."""


def _negligible(grad: np.ndarray, move: np.ndarray) -> bool:
    """Whether a move promises less than :data:`MIN_DECREASE` of log ℓ: −∇ᵀ move < 1e-3."""
    return -float(grad @ move) < MIN_DECREASE


LINE_POINTS = 6
"""The most value-only points a chain's line search takes."""
EXTRAPOLATE = 3.0
"""While the line search's best point is its farthest, the next t is this many times it."""


def next_fraction(value0: float, slope0: float, line: list[tuple[float, float]]) -> float | None:
    """The next t of a value-only line search along a direction from t = 0 (log ℓ = ``value0``,
    slope ``slope0`` there), given the (t, log ℓ) tried, or None after :data:`LINE_POINTS`.

    Where the best point is the farthest tried, the loss still falls: t ← :data:`EXTRAPOLATE` · t.
    Where t = 0 stays best, the nearest t tried overshot: t ← :func:`backtrack` of it (its slope
    unknown: the quadratic through value0, slope0 and its value; half where it diverged).
    Otherwise the minimum is bracketed by the best t and the next larger one tried: their
    geometric mean (bisection in log t)."""
    if not line or len(line) >= LINE_POINTS:
        return None
    best_t, _ = min([(0.0, value0), *line], key=lambda point: (point[1], point[0]))
    larger = sorted(t for t, _ in line if t > best_t)
    if not larger:
        return EXTRAPOLATE * best_t
    if best_t == 0.0:
        t, value = min(line)
        if not math.isfinite(value):
            return 0.5 * t
        return t * backtrack(value0, slope0 * t, value, math.nan)
    return math.sqrt(best_t * larger[0])
