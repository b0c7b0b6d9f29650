"""Closed forms for one momentum-SGD step on a quadratic: ρ, critical lr, regimes, optimum.

Per Hessian eigenvalue λ the transition of the state (θ, v) has the eigenvalues μ of

    heavy ball:  μ² − (1 + β − ηλ) μ + β = 0
    Nesterov:    μ² − (1 + β)(1 − ηλ) μ + β (1 − ηλ) = 0

and ρ = max |μ| over the spectrum decides convergence (ρ < 1). For λ > 0, 0 ≤ β < 1:
ρ < 1 iff ηλ < 2(1 + β) (heavy ball) or ηλ < 2(1 + β)/(1 + 2β) (Nesterov).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor

from metatune import checks
from metatune._types import Scalar
from metatune.errors import invalid

ArrayLike = Union[Scalar, np.ndarray, Sequence[float]]
"""A number, a tensor, a numpy array or a (nested) sequence of numbers."""

Regime = Literal["underdamped", "critically damped", "overdamped"]


def spectral_radius(lr: ArrayLike, momentum: ArrayLike, eigenvalues: ArrayLike,
                    nesterov: bool = False) -> float | np.ndarray:
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
    b, c = _coefficients(eta[..., None], beta[..., None], lam, checks.flag("nesterov", nesterov))
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


def critical_lr(lambda_max: Scalar, momentum: Scalar, nesterov: bool = False) -> float:
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
    if checks.flag("nesterov", nesterov):
        bound /= 1.0 + 2.0 * beta
    return bound / lam


def regime(lr: Scalar, momentum: Scalar, eigenvalue: Scalar, nesterov: bool = False, *,
           rtol: float = 1e-9) -> Regime:
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
    rtol = checks.non_negative("rtol", rtol, note="the relative width of 'critically damped'")
    b, c = (float(x) for x in _coefficients(eta, beta, lam, checks.flag("nesterov", nesterov)))
    discriminant = b * b - 4.0 * c
    if abs(discriminant) <= rtol * max(b * b, 4.0 * abs(c)):
        return "critically damped"
    return "underdamped" if discriminant < 0 else "overdamped"


def damping_ratio(lr: Scalar, momentum: Scalar, eigenvalue: Scalar) -> float:
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


def optimal_hyperparameters(lambda_min: Scalar, lambda_max: Scalar) -> tuple[float, float]:
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


def horizon_loss(lr: ArrayLike, momentum: ArrayLike, nodes: ArrayLike, weights: ArrayLike,
                 steps: int) -> np.ndarray:
    """ℓ(θ_T) − ℓ* of heavy ball after ``steps`` = T steps on the quadratic model whose
    gradient at θ₀ has the spectral measure Σⱼ wⱼ δ(θⱼ) (:func:`~metatune.stability.lanczos_quadrature`
    from ∇ℓ(θ₀)), for every (η, β) in the broadcast of ``lr`` and ``momentum``.

    Per eigenvalue λ the error e = θ − θ* obeys e₁ = (1 − ηλ) e₀ (PyTorch's first step,
    v₁ = g₀) and e_{t+1} = (1 + β − ηλ) e_t − β e_{t−1}, so e_T = r_T(λ) e₀ with
    r_T = first entry of [[1 + β − ηλ, −β], [1, 0]]^{T−1} (1 − ηλ, 1). With g = H e₀,
    e₀ⱼ² = gⱼ²/λⱼ and ℓ − ℓ* = ½ Σ λ e², hence ℓ_T − ℓ* = ½ Σⱼ (wⱼ/θⱼ) r_T(θⱼ)². Nodes
    θⱼ ≤ 0 are left out (the model has no minimum along them); inf where the run diverges.

    Example:
        >>> round(float(horizon_loss(0.1, 0.0, [1.0], [1.0], 2)), 8)  # ½ · (1 − 0.1)⁴
        0.32805
    """
    lrs, momenta = np.broadcast_arrays(_checked_lr(lr), _checked_momentum(momentum))
    nodes, weights = _checked_finite(nodes, "nodes").ravel(), _checked_finite(weights, "weights").ravel()
    if nodes.shape != weights.shape:
        raise invalid("weights", weights.tolist(), f"one weight per node ({nodes.size})")
    steps = checks.positive_int("steps", steps, note="the horizon T")
    keep = nodes > 0
    nodes, weights = nodes[keep], weights[keep]
    step = lrs[..., None] * nodes  # ηλ per (point, node)
    beta = np.broadcast_to(momenta[..., None], step.shape)
    transition = np.zeros(step.shape + (2, 2))
    transition[..., 0, 0], transition[..., 0, 1], transition[..., 1, 0] = 1.0 + beta - step, -beta, 1.0
    with np.errstate(all="ignore"):
        power = np.linalg.matrix_power(transition, steps - 1)
        residual = power[..., 0, 0] * (1.0 - step) + power[..., 0, 1]
        loss = 0.5 * (residual * residual * (weights / nodes)).sum(axis=-1)
    return np.where(np.isfinite(loss), loss, np.inf)


# --- argument checks ----------------------------------------------------------------------


def _as_array(value: ArrayLike, name: str, scalar: bool) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "iuf":
            raise TypeError(type(value))  # strings, flags, complex numbers, objects
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid(name, value, "a real number or an array of them") from None
    if scalar and array.size != 1:
        raise invalid(name, value, "one real number (a float or a one-element tensor)")
    return array.reshape(()) if scalar else array


def _checked(value: ArrayLike, name: str, interval: checks.Interval, scalar: bool) -> np.ndarray:
    return interval.check_all(name, _as_array(value, name, scalar))


def _checked_lr(value: ArrayLike, scalar: bool = False) -> np.ndarray:
    return _checked(value, "lr", checks.LEARNING_RATE, scalar)


def _checked_momentum(value: ArrayLike, scalar: bool = False) -> np.ndarray:
    return _checked(value, "momentum", checks.MOMENTUM, scalar)


def _checked_finite(value: ArrayLike, name: str, scalar: bool = False) -> np.ndarray:
    return _checked(value, name, FINITE, scalar)


FINITE = checks.Interval(what="a finite real value")
