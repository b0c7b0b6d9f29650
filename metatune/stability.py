"""Stability of one momentum-SGD step on the local quadratic model.

On a quadratic with Hessian H the update is linear in the state (θ, v). Per eigenvalue
λ of H, the transition matrix has the two eigenvalues μ that solve

    heavy ball:  μ² − (1 + β − ηλ) μ + β = 0
    Nesterov:    μ² − (1 + β)(1 − ηλ) μ + β (1 − ηλ) = 0

and the spectral radius ρ = max |μ| over the spectrum decides convergence (ρ < 1). For
λ > 0 and 0 ≤ β < 1, ρ < 1 iff ηλ < 2(1 + β) (heavy ball) or ηλ < 2(1 + β)/(1 + 2β)
(Nesterov). A negative λ gives ρ > 1 by escape from a saddle, which is reported apart
from curvature-driven divergence. The extreme eigenvalues of the true Hessian come
from Lanczos (``scipy.sparse.linalg.eigsh``) on forward-over-reverse Hessian-vector
products.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from metatune._types import Batch, Batches, Params, TrainLoss
from metatune.errors import InvalidArgumentError, invalid
from metatune.unroll import UnrollResult, check_batches, check_params, check_scalar_loss, check_steps
from metatune.unroll import is_finite, unroll

Regime = Literal["underdamped", "critically damped", "overdamped"]
HessianVectorProduct = Callable[[Params], Params]

DENSE_MAX_DIM = 20
"""Up to this many parameters the Hessian is built densely from n HVPs: ARPACK's default
Krylov basis (ncv = min(n, 20)) would span the whole space twice over, so Lanczos costs more."""


class NonFiniteCurvatureError(InvalidArgumentError):
    """A Hessian-vector product at ``params`` is NaN or inf: no local quadratic model exists."""


# --- closed forms -------------------------------------------------------------------------


def spectral_radius(lr: Any, momentum: Any, eigenvalues: Any, nesterov: bool = False) -> float | np.ndarray:
    """ρ = max over λ of the largest |μ| solving the characteristic equation above.

    The root formula is cancellation-free and uses a complex square root, so any real λ
    (negative too) is allowed.

    Args:
        lr: η > 0, a number, 0-d tensor or array (broadcast with ``momentum``).
        momentum: β in [0, 1), same forms.
        eigenvalues: Hessian eigenvalues, any array-like (list, numpy array, tensor).
        nesterov: Nesterov momentum instead of heavy ball.

    Returns:
        A float for scalar ``lr`` and ``momentum``; otherwise an array over their
        broadcast shape (the maximum is taken over the eigenvalues).

    Example:
        >>> round(spectral_radius(0.1, 0.81, [1.0, 10.0]), 6)
        0.9
    """
    eta = _checked_lr(lr)
    beta = _checked_momentum(momentum)
    lam = _checked_finite(eigenvalues, "eigenvalues").reshape(-1)
    if lam.size == 0:
        raise invalid("eigenvalues", eigenvalues, "at least one Hessian eigenvalue")
    eta, beta = np.broadcast_arrays(eta, beta)
    b, c = _coefficients(eta[..., None], beta[..., None], lam, _checked_bool(nesterov, "nesterov"))
    rho = _largest_root_modulus(b, c).max(axis=-1)
    return float(rho) if rho.ndim == 0 else rho


def _coefficients(
    eta: np.ndarray, beta: np.ndarray, lam: np.ndarray, nesterov: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(b, c) of μ² − bμ + c = 0 for heavy ball or Nesterov."""
    step = eta * lam
    if nesterov:
        return (1.0 + beta) * (1.0 - step), beta * (1.0 - step)
    return 1.0 + beta - step, np.broadcast_to(beta, step.shape)


def _largest_root_modulus(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """max |μ| over the roots of μ² − bμ + c = 0.

    μ₁ = (b + sign(b)·√(b² − 4c))/2 adds terms of one sign (no cancellation) and has the
    larger modulus; the other root is μ₂ = c/μ₁ (Vieta). Complex roots share one modulus.
    """
    root = np.sqrt((b * b - 4.0 * c).astype(complex))
    return np.abs(b + np.where(b >= 0, 1.0, -1.0) * root) / 2.0


def critical_lr(lambda_max: Any, momentum: Any, nesterov: bool = False) -> float:
    """The largest stable η for curvature λ_max: 2(1+β)/λ_max, Nesterov 2(1+β)/((1+2β)λ_max).

    Returns inf when λ_max ≤ 0 (no positive curvature to diverge along).

    Example:
        >>> critical_lr(4.0, 0.5)
        0.75
    """
    lam = float(_checked_finite(lambda_max, "lambda_max", scalar=True))
    beta = float(_checked_momentum(momentum, scalar=True))
    if lam <= 0:
        return math.inf
    bound = 2.0 * (1.0 + beta)
    if _checked_bool(nesterov, "nesterov"):
        bound /= 1.0 + 2.0 * beta
    return bound / lam


def regime(lr: Any, momentum: Any, eigenvalue: Any, nesterov: bool = False, *, rtol: float = 1e-9) -> Regime:
    """How the mode of eigenvalue λ moves: by the sign of the discriminant b² − 4c.

    Complex roots are "underdamped" (heavy ball: |μ| = √β), a double root (|b² − 4c| ≤
    rtol·max(b², 4|c|)) "critically damped", real distinct roots "overdamped".

    Example:
        >>> regime(1.0, 0.25, 0.25), regime(1.0, 0.25, 1.0), regime(1.0, 0.25, 0.1)
        ('critically damped', 'underdamped', 'overdamped')
    """
    eta = _checked_lr(lr, scalar=True)
    beta = _checked_momentum(momentum, scalar=True)
    lam = _checked_finite(eigenvalue, "eigenvalue", scalar=True)
    b, c = (float(x) for x in _coefficients(eta, beta, lam, _checked_bool(nesterov, "nesterov")))
    discriminant = b * b - 4.0 * c
    if abs(discriminant) <= rtol * max(b * b, 4.0 * abs(c)):
        return "critically damped"
    return "underdamped" if discriminant < 0 else "overdamped"


def damping_ratio(lr: Any, momentum: Any, eigenvalue: Any) -> float:
    """ζ = (1 − β)/(2√(ηλ)), the damping ratio of the continuous-time limit of heavy ball.

    ζ < 1 oscillates, ζ > 1 creeps; the exact discrete boundary is :func:`regime`'s
    (ηλ = (1 − √β)², which tends to ζ = 1 as β → 1). λ = 0 gives inf (pure friction),
    λ < 0 gives nan (no restoring force: a saddle).

    Example:
        >>> damping_ratio(1.0, 0.5, 0.25)
        0.5
    """
    eta = float(_checked_lr(lr, scalar=True))
    beta = float(_checked_momentum(momentum, scalar=True))
    lam = float(_checked_finite(eigenvalue, "eigenvalue", scalar=True))
    if lam < 0:
        return math.nan
    return math.inf if lam == 0 else (1.0 - beta) / (2.0 * math.sqrt(eta * lam))


def optimal_hyperparameters(lambda_min: Any, lambda_max: Any) -> tuple[float, float]:
    """Heavy ball's (η*, β*) minimising ρ over [μ, L] = [λ_min, λ_max] (Polyak, 1964).

    κ = L/μ, β* = ((√κ − 1)/(√κ + 1))², η* = 4/(√L + √μ)², giving ρ = √β*. (The
    often quoted η = 2/(μ(1 + √κ)²) is half of η* and not optimal here.)

    Raises:
        ValueError: unless 0 < lambda_min ≤ lambda_max, both finite.

    Example:
        >>> optimal_hyperparameters(1.0, 9.0)
        (0.25, 0.25)
    """
    low = float(_checked_finite(lambda_min, "lambda_min", scalar=True))
    high = float(_checked_finite(lambda_max, "lambda_max", scalar=True))
    if low <= 0:
        raise invalid("lambda_min", low, "a Hessian eigenvalue > 0 (a strongly convex quadratic)")
    if low > high:
        raise invalid("lambda_min", low, f"lambda_min <= lambda_max={high!r}")
    root_kappa = math.sqrt(high / low)
    momentum = ((root_kappa - 1.0) / (root_kappa + 1.0)) ** 2
    return 4.0 / (math.sqrt(high) + math.sqrt(low)) ** 2, momentum


# --- argument checks ----------------------------------------------------------------------


def _as_array(value: Any, name: str, scalar: bool) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid(name, value, "a real number or an array of them") from None
    if scalar and array.size != 1:
        raise invalid(name, value, "one real number (a float or a one-element tensor)")
    return array.reshape(()) if scalar else array


def _checked(
    value: Any, name: str, ok: Callable[[np.ndarray], np.ndarray], expected: str, scalar: bool
) -> np.ndarray:
    array = _as_array(value, name, scalar)
    with np.errstate(invalid="ignore"):
        bad = ~ok(array)
    if bad.any():
        raise invalid(name, float(array[bad].flat[0]), expected)
    return array


def _checked_lr(value: Any, scalar: bool = False) -> np.ndarray:
    return _checked(value, "lr", lambda x: np.isfinite(x) & (x > 0), "a finite learning rate > 0", scalar)


def _checked_momentum(value: Any, scalar: bool = False) -> np.ndarray:
    return _checked(value, "momentum", lambda x: (x >= 0) & (x < 1), "a momentum in [0, 1)", scalar)


def _checked_finite(value: Any, name: str, scalar: bool = False) -> np.ndarray:
    return _checked(value, name, np.isfinite, "finite real values", scalar)


def _checked_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(name, value, "True or False")
    return value


# --- Hessian spectrum -----------------------------------------------------------------------


def hessian_vector_product(
    train_loss: TrainLoss, params: Params, batch: Batch = None
) -> HessianVectorProduct:
    """v ↦ H v with H = ∇²ℓ(θ; batch), by forward-over-reverse: ``jvp(grad(ℓ), (θ,), (v,))``.

    Example:
        >>> loss = lambda p, b: (p["x"] ** 3).sum()
        >>> hvp = hessian_vector_product(loss, {"x": torch.tensor([1.0, 2.0])})
        >>> hvp({"x": torch.tensor([1.0, 1.0])})["x"]  # 6 x ⊙ v
        tensor([ 6., 12.])
    """
    params = check_params(params)
    gradient = torch.func.grad(lambda p: train_loss(p, batch))

    def hvp(vector: Params) -> Params:
        tangent = {n: vector[n].to(dtype=p.dtype, device=p.device) for n, p in params.items()}
        return torch.func.jvp(gradient, (params,), (tangent,))[1]

    return hvp


class HessianOperator(LinearOperator):
    """H as a float64 ``scipy`` operator on the flattened parameters; counts its HVPs.

    Vectors cross to the parameters' device once per product; the HVP runs there in the
    parameters' dtype.
    """

    def __init__(self, hvp: HessianVectorProduct, params: Params) -> None:
        self._hvp, self._params = hvp, params
        self._device = next(iter(params.values())).device
        self._sizes = [p.numel() for p in params.values()]
        self.eps = max(torch.finfo(p.dtype).eps for p in params.values())
        self.evals = 0
        super().__init__(dtype=np.float64, shape=(sum(self._sizes), sum(self._sizes)))

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(self._device)
        pieces = zip(self._params.items(), flat.split(self._sizes))
        out = self._hvp({n: piece.view_as(p) for (n, p), piece in pieces})
        self.evals += 1
        result = torch.cat([out[n].reshape(-1).to(self._device, torch.float64) for n in self._params])
        result = result.cpu().numpy()
        if not np.isfinite(result).all():
            raise NonFiniteCurvatureError(
                "params is invalid here: the Hessian-vector product is NaN or inf; "
                "expected params where the loss has finite curvature"
            )
        return result


def extreme_eigenvalues(
    operator: HessianOperator, *, tol: float = 1e-6, seed: int = 0
) -> tuple[float, float]:
    """(λ_min, λ_max), the algebraically smallest and largest eigenvalues of ``operator``.

    n ≤ :data:`DENSE_MAX_DIM`: exact, from the dense Hessian (n HVPs). Otherwise two
    Lanczos runs from one seeded start v₀: ``which="LA"`` for λ_max, then ``"SA"`` on
    H − λ_max I, so that ``tol`` (relative to the target) bounds λ_min's error by about
    tol·(λ_max − λ_min), the scale on which ρ depends, instead of demanding relative
    accuracy of a λ_min near zero. A random v₀ that H maps onto itself means H = cI,
    where Lanczos breaks down; then (c, c) is returned.
    """
    n = operator.shape[0]
    if n <= DENSE_MAX_DIM:
        dense = np.column_stack([operator.matvec(column) for column in np.eye(n)])
        spectrum = np.linalg.eigvalsh((dense + dense.T) / 2.0)
        return float(spectrum[0]), float(spectrum[-1])
    start = np.random.default_rng(seed).standard_normal(n)
    image = operator.matvec(start)
    rayleigh = float(start @ image / (start @ start))
    if np.linalg.norm(image - rayleigh * start) <= 100.0 * operator.eps * np.linalg.norm(image):
        return rayleigh, rayleigh
    top = float(eigsh(operator, k=1, which="LA", tol=tol, v0=start, return_eigenvectors=False)[0])
    shifted = operator - top * LinearOperator((n, n), matvec=lambda x: x, dtype=np.float64)
    bottom = float(eigsh(shifted, k=1, which="SA", tol=tol, v0=start, return_eigenvectors=False)[0])
    return min(bottom + top, top), top


# --- reports --------------------------------------------------------------------------------


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
    lr: Any,
    momentum: Any,
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
    nesterov = _checked_bool(nesterov, "nesterov")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise invalid("tol", tol, "a finite tolerance >= 0 (0: machine precision)")
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
    """Stability checked every few steps of a run; ``run`` is the run itself (cut short if it diverged).

    A point where the run had diverged has ρ = inf and λ = nan. ``stable`` means every point
    was stable from positive curvature (saddles aside) and the run stayed finite.
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


def along_run(
    train_loss: TrainLoss,
    params: Params,
    lr: Any,
    momentum: Any,
    steps: int,
    batches: Batches = None,
    nesterov: bool = False,
    *,
    every: int = 50,
    tol: float = 1e-6,
    seed: int = 0,
) -> RunStability:
    """Train as :func:`metatune.unroll` does, and :func:`estimate` at step 0 and every ``every`` steps.

    Each estimate uses the batch of the step it is taken at (the last batch at the end of
    the sequence). A run that diverges is stopped there and reported, never raised.

    Example:
        >>> loss = lambda p, b: (p["x"] ** 2).sum()
        >>> rs = along_run(loss, {"x": torch.ones(3)}, lr=0.1, momentum=0.5, steps=4, every=2)
        >>> rs.steps_checked, rs.stable
        ([0, 2, 4], True)
    """
    batch_list = check_batches(batches, check_steps(steps))
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise invalid("every", every, "an integer >= 1")
    check = functools.partial(
        estimate, train_loss, lr=lr, momentum=momentum, nesterov=nesterov, tol=tol, seed=seed
    )
    current, velocity, losses = check_params(params), None, []
    points = [(0, check(current, batch=_batch_at(batches, 0)))]
    for start in range(0, steps, every):
        chunk = unroll(train_loss, current, lr, momentum, min(every, steps - start),
                       batch_list[start : start + every], nesterov, velocity=velocity)
        current, velocity, end = chunk.params, chunk.velocity, start + len(chunk.losses)
        losses.append(chunk.losses)
        finite = is_finite(*current.values(), *velocity.values(), chunk.losses)
        points.append((end, _estimate_if_finite(check, current, _batch_at(batches, end), finite)))
        if points[-1][1] is None:
            break
    return _summarise(points, UnrollResult(current, velocity, torch.cat(losses)))


def _batch_at(batches: Batches, step: int) -> Batch:
    """The batch of ``step``, the last one past the end, or None without batches."""
    return None if batches is None else batches[min(step, len(batches) - 1)]


def _estimate_if_finite(
    check: Callable[..., StabilityReport], params: Params, batch: Batch, finite: bool
) -> StabilityReport | None:
    """The report at a point of the run, or None where the run (or its curvature) diverged."""
    if not finite:
        return None
    try:
        return check(params, batch=batch)
    except NonFiniteCurvatureError:
        return None


def _summarise(points: list[tuple[int, StabilityReport | None]], run: UnrollResult) -> RunStability:
    reports = [report for _, report in points]
    radii = [math.inf if r is None else r.spectral_radius for r in reports]
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
    )
