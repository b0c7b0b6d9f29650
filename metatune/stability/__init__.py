"""Stability of one momentum-SGD step on the local quadratic model.

On a quadratic with Hessian H the update is linear in the state (θ, v). Per eigenvalue
λ of H, the transition matrix has the two eigenvalues μ that solve

    heavy ball:  μ² − (1 + β − ηλ) μ + β = 0
    Nesterov:    μ² − (1 + β)(1 − ηλ) μ + β (1 − ηλ) = 0

and the spectral radius ρ = max |μ| over the spectrum decides convergence (ρ < 1). For
λ > 0 and 0 ≤ β < 1, ρ < 1 iff ηλ < 2(1 + β) (heavy ball) or ηλ < 2(1 + β)/(1 + 2β)
(Nesterov). A negative λ gives ρ > 1 by escape from a saddle, which is reported apart
from curvature-driven divergence. The extreme eigenvalues of the true Hessian come
from Lanczos (``scipy.sparse.linalg.eigsh``) on Hessian-vector products, each a backward
pass through the gradient (:mod:`metatune.hessian`).
"""

from __future__ import annotations

from metatune.errors import NonFiniteCurvatureError
from metatune.stability.report import RunStability, StabilityReport, along_run, estimate
from metatune.stability.spectrum import (
    DENSE_MAX_DIM,
    HessianOperator,
    extreme_eigenvalues,
    hessian_vector_product,
    lanczos_quadrature,
    largest_eigenvalue,
    spectrum_ends,
)
from metatune.stability.theory import (
    Regime,
    critical_lr,
    damping_ratio,
    horizon_loss,
    optimal_hyperparameters,
    regime,
    spectral_radius,
)

__all__ = [
    "DENSE_MAX_DIM",
    "HessianOperator",
    "NonFiniteCurvatureError",
    "Regime",
    "RunStability",
    "StabilityReport",
    "along_run",
    "critical_lr",
    "damping_ratio",
    "estimate",
    "extreme_eigenvalues",
    "hessian_vector_product",
    "horizon_loss",
    "lanczos_quadrature",
    "largest_eigenvalue",
    "spectrum_ends",
    "optimal_hyperparameters",
    "regime",
    "spectral_radius",
]
