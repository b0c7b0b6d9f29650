"""Stability reports: the local transition at θ (:func:`estimate`) and along a run (:func:`along_run`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import torch
from torch import Tensor

from metatune import checks
from metatune._types import Batch, Batches, Params, Scalar, TrainLoss
from metatune.dynamics import SCALAR_GROUP, check_lr, check_momentum, group_hyperparameter
from metatune.errors import NonFiniteCurvatureError, invalid
from metatune.schedule import Knots
from metatune.stability.spectrum import HessianOperator, extreme_eigenvalues, hessian_vector_product
from metatune.stability.theory import (
    Regime,
    _checked_lr,
    _checked_momentum,
    critical_lr,
    damping_ratio,
    regime,
    spectral_radius,
)
from metatune.unroll import UnrollResult, check_batches, check_params, check_scalar_loss, check_steps
from metatune.unroll import is_finite, unroll


@dataclass(frozen=True)
class StabilityReport:
    """The local transition at θ: extreme curvatures, ρ, and what each end of the spectrum does.

    ``spectral_radius`` is ρ over [λ_min, λ_max] (reached at an end point; a negative λ_min
    gives ρ > 1 by saddle escape). ``stable`` is about positive curvature alone, η < critical_lr:
    a saddle (``saddle``: λ_min < 0 beyond the eigenvalue tolerance) is not instability.
    """

    lambda_max: float
    lambda_min: float
    spectral_radius: float
    critical_lr: float
    stable: bool
    saddle: bool
    regime_max: Regime
    regime_min: Regime
    damping_ratio_max: float
    damping_ratio_min: float
    lr: float
    momentum: float
    nesterov: bool
    hvp_evals: int


def estimate(
    train_loss: TrainLoss,
    params: Params,
    lr: Scalar,
    momentum: Scalar,
    batch: Batch = None,
    nesterov: bool = False,
    *,
    tol: float = 1e-6,
    seed: int = 0,
) -> StabilityReport:
    """Diagnose one momentum-SGD step at θ from the extreme eigenvalues of ∇²ℓ(θ; batch).

    Args:
        train_loss: ``train_loss(params, batch) -> scalar``.
        params: θ by name.
        lr: η > 0, a number or 0-d tensor.
        momentum: β in [0, 1), a number or 0-d tensor.
        batch: the batch the Hessian is taken on.
        nesterov: Nesterov momentum instead of heavy ball.
        tol: Lanczos tolerance: λ errors of about tol·(λ_max − λ_min) at most.
        seed: seed of the Lanczos start vector (reproducible reports).

    Returns:
        :class:`StabilityReport`.

    Raises:
        ValueError: a bad argument, or :class:`NonFiniteCurvatureError` if H v is NaN/inf.
        scipy.sparse.linalg.ArpackNoConvergence: Lanczos did not reach ``tol``.

    Example:
        >>> loss = lambda p, b: 0.5 * (torch.tensor([1.0, 4.0]) * p["x"] ** 2).sum()
        >>> rep = estimate(loss, {"x": torch.ones(2)}, lr=0.1, momentum=0.5)
        >>> rep.lambda_max, rep.critical_lr, rep.stable
        (4.0, 0.75, True)
    """
    params = check_params(params)
    eta = float(_checked_lr(lr, scalar=True))
    beta = float(_checked_momentum(momentum, scalar=True))
    nesterov = checks.flag("nesterov", nesterov)
    tol = checks.non_negative("tol", tol, note="the Lanczos tolerance; 0: machine precision")
    seed = checks.integer("seed", seed, low=0, note="the seed of the Lanczos start vector")
    check_scalar_loss(train_loss(params, batch), "train_loss(params, batch)")
    operator = HessianOperator(hessian_vector_product(train_loss, params, batch), params)
    low, high = extreme_eigenvalues(operator, tol=tol, seed=seed)
    saddle = low < -max(tol, 1e3 * operator.eps) * max(abs(low), abs(high))
    return _report(low, high, eta, beta, nesterov, saddle, operator.evals)


def _report(
    low: float, high: float, eta: float, beta: float, nesterov: bool, saddle: bool, evals: int
) -> StabilityReport:
    limit = critical_lr(high, beta, nesterov)
    return StabilityReport(
        lambda_max=high,
        lambda_min=low,
        spectral_radius=spectral_radius(eta, beta, [low, high], nesterov),
        critical_lr=limit,
        stable=eta < limit,
        saddle=bool(saddle),
        regime_max=regime(eta, beta, high, nesterov),
        regime_min=regime(eta, beta, low, nesterov),
        damping_ratio_max=damping_ratio(eta, beta, high),
        damping_ratio_min=damping_ratio(eta, beta, low),
        lr=eta,
        momentum=beta,
        nesterov=nesterov,
        hvp_evals=evals,
    )


# --- along a training run -----------------------------------------------------------------


@dataclass(frozen=True)
class RunStability:
    """Stability checked at some steps of a run; ``run`` is the run itself (cut short if it diverged).

    At each checked step t: λ_max, λ_min of ∇²ℓ(θ_t), the (η_t, β_t) of the schedule there, its
    ρ and the critical lr 2(1 + β_t)/λ_max(θ_t). A point where the run had diverged has
    ρ = inf and λ = nan. ``stable`` means every point was stable from positive curvature
    (saddles aside) and the run stayed finite. ``unstable_steps``: every step t whose η_t
    passes the critical lr of the last checked θ at or before t (for a schedule, between
    checks the curvature is taken as that of the last check).
    """

    max_spectral_radius: float
    steps_checked: list[int]
    spectral_radii: list[float]
    lambda_max: list[float]
    lambda_min: list[float]
    stable: bool
    saddle_seen: bool
    diverged: bool
    hvp_evals: int
    run: UnrollResult
    lrs: list[float]
    momenta: list[float]
    critical_lrs: list[float]
    unstable_steps: list[int]


def along_run(
    train_loss: TrainLoss,
    params: Params,
    lr: Scalar | Knots | Tensor,
    momentum: Scalar | Knots | Tensor,
    steps: int,
    batches: Batches = None,
    nesterov: bool = False,
    *,
    every: int = 50,
    at: Sequence[int] | None = None,
    tol: float = 1e-6,
    seed: int = 0,
) -> RunStability:
    """Train as :func:`metatune.unroll` does, and :func:`estimate` at step 0 and every ``every``
    steps, or at the steps ``at`` (e.g. a schedule's knots) and at T, each at the schedule's
    η_t, β_t (the last step's at T).

    ``lr`` and ``momentum`` are one value, a tensor of one per step, or
    :class:`~metatune.schedule.Knots` (one η and one β for every parameter). Each estimate
    uses the batch of the step it is taken at (the last batch at the end of the sequence). A
    run that diverges is stopped there and reported, never raised.

    Example:
        >>> loss = lambda p, b: (p["x"] ** 2).sum()
        >>> rs = along_run(loss, {"x": torch.ones(3)}, lr=0.1, momentum=0.5, steps=4, every=2)
        >>> rs.steps_checked, rs.stable
        ([0, 2, 4], True)
    """
    params = check_params(params)
    batch_list = check_batches(batches, check_steps(steps))
    like = next(iter(params.values()))
    lrs = _path(lr, params, steps, like, name="lr", log=True)
    momenta = _path(momentum, params, steps, like, name="momentum", log=False)
    if at is None:
        every = checks.positive_int("every", every, note="steps between stability checks")
        checked = sorted({*range(0, steps, every), steps})
    else:
        checked = sorted({checks.integer("at", t, low=0, high=steps, note="steps of the run") for t in at}
                         | {0, steps})
    current, velocity, losses = params, None, []
    points = [(0, _check(train_loss, current, lrs, momenta, 0, batches, nesterov, tol, seed))]
    for start, end in zip(checked, checked[1:]):
        chunk = unroll(train_loss, current, lrs[start:end], momenta[start:end], end - start,
                       batch_list[start:end], nesterov, velocity=velocity)
        current, velocity = chunk.params, chunk.velocity
        losses.append(chunk.losses)
        finite = is_finite(*current.values(), *velocity.values(), chunk.losses)
        report = _check(train_loss, current, lrs, momenta, end, batches, nesterov, tol, seed) if finite else None
        points.append((end, report))
        if report is None:
            break
    run = UnrollResult(current, velocity if velocity is not None else {n: torch.zeros_like(p) for n, p in params.items()},
                       torch.cat(losses) if losses else torch.empty(0))
    return _summarise(points, run, lrs, steps)


def _path(value: Scalar | Knots | Tensor, params: Params, steps: int, like: Tensor, *, name: str, log: bool) -> Tensor:
    """One η (or β) per step, from a value, a per-step tensor or knots (one for every parameter)."""
    if isinstance(value, Mapping):
        raise invalid(name, dict(value), "one value, a tensor per step or Knots (no per-group values here)")
    path = group_hyperparameter(value, params, name=name, like=like, steps=steps, log=log)
    (check_lr if log else check_momentum)(path)
    return torch.stack([values[SCALAR_GROUP].detach() for values in path.every_step()])


def _check(train_loss: TrainLoss, params: Params, lrs: Tensor, momenta: Tensor, step: int, batches: Batches,
           nesterov: bool, tol: float, seed: int) -> StabilityReport | None:
    """:func:`estimate` at θ_step with (η, β) of that step (the last step's past the end)."""
    t = min(step, len(lrs) - 1)
    try:
        return estimate(train_loss, params, float(lrs[t]), float(momenta[t]), _batch_at(batches, step), nesterov,
                        tol=tol, seed=seed)
    except NonFiniteCurvatureError:
        return None


def _batch_at(batches: Batches, step: int) -> Batch:
    """The batch of ``step``, the last one past the end, or None without batches."""
    return None if batches is None else batches[min(step, len(batches) - 1)]


def _summarise(points: list[tuple[int, StabilityReport | None]], run: UnrollResult, lrs: Tensor,
               steps: int) -> RunStability:
    reports = [report for _, report in points]
    radii = [math.inf if r is None else r.spectral_radius for r in reports]
    critical = [math.nan if r is None else r.critical_lr for r in reports]
    checked = [step for step, _ in points]
    unstable = [t for t in range(steps) if _passes(float(lrs[t]), t, checked, critical)]
    return RunStability(
        max_spectral_radius=max(radii),
        steps_checked=[step for step, _ in points],
        spectral_radii=radii,
        lambda_max=[math.nan if r is None else r.lambda_max for r in reports],
        lambda_min=[math.nan if r is None else r.lambda_min for r in reports],
        stable=all(r is not None and r.stable for r in reports),
        saddle_seen=any(r is not None and r.saddle for r in reports),
        diverged=reports[-1] is None,
        hvp_evals=sum(r.hvp_evals for r in reports if r is not None),
        run=run,
        lrs=[math.nan if r is None else r.lr for r in reports],
        momenta=[math.nan if r is None else r.momentum for r in reports],
        critical_lrs=critical,
        unstable_steps=unstable,
    )


def _passes(lr: float, step: int, checked: list[int], critical: list[float]) -> bool:
    """Whether η_t is at or past the critical lr of the last check at or before step t."""
    last = max(i for i, t in enumerate(checked) if t <= step)
    return math.isfinite(critical[last]) and lr >= critical[last]
