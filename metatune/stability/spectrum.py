"""The Hessian's extreme eigenvalues from Hessian-vector products and a library Lanczos.

H v comes from a backward pass through the gradient, built once per θ
(:mod:`metatune.hessian`); λ_max and λ_min from ``scipy.sparse.linalg.eigsh`` on a
``LinearOperator`` wrapping it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from metatune import checks
from metatune._types import Batch, Params, TrainLoss
from metatune.errors import NonFiniteCurvatureError, invalid
from metatune.hessian import GradientGraph
from metatune.unroll import check_params

HessianVectorProduct = Callable[[Params], Params]

DENSE_MAX_DIM = 20
"""Up to this many parameters the Hessian is built densely from n HVPs: ARPACK's default
Krylov basis (ncv = min(n, 20)) would span the whole space twice over, so Lanczos costs more."""


def hessian_vector_product(
    train_loss: TrainLoss, params: Params, batch: Batch = None, *, graph: GradientGraph | None = None
) -> HessianVectorProduct:
    """v ↦ H v with H = ∇²ℓ(θ; batch): the gradient is built with its graph at the first
    product (or is ``graph``, built by the caller, who also wants the gradient) and kept;
    each product is one backward pass through it (:class:`GradientGraph`). n products cost
    1 + n · ``backward_step`` gradients (``CostModel.hvps``).

    Example:
        >>> loss = lambda p, b: (p["x"] ** 3).sum()
        >>> hvp = hessian_vector_product(loss, {"x": torch.tensor([1.0, 2.0])})
        >>> hvp({"x": torch.tensor([1.0, 1.0])})["x"]  # 6 x ⊙ v
        tensor([ 6., 12.])
    """
    params = check_params(params)
    built: list[GradientGraph] = [] if graph is None else [graph]

    def hvp(vector: Params) -> Params:
        if not built:
            built.append(GradientGraph(train_loss, params, batch))
        return built[0].hvp({n: vector[n].to(dtype=p.dtype, device=p.device) for n, p in params.items()})

    return hvp


class HessianOperator(LinearOperator):
    """H as a float64 ``scipy`` operator on the flattened parameters; counts its HVPs.

    Vectors cross to the parameters' device once per product; the HVP runs there in the
    parameters' dtype.
    """

    def __init__(self, hvp: HessianVectorProduct, params: Params) -> None:
        checks.function("hvp", hvp, "a function v -> H v (stability.hessian_vector_product gives one)")
        params = check_params(params)
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


def largest_eigenvalue(operator: HessianOperator, *, tol: float = 1e-6, seed: int = 0) -> float:
    """λ_max of ``operator``: Lanczos ``which="LA"`` from a seeded start (dense for small n)."""
    tol, seed = _check_lanczos(operator, tol, seed)
    n = operator.shape[0]
    if n <= DENSE_MAX_DIM:
        return extreme_eigenvalues(operator, tol=tol, seed=seed)[1]
    return _top(operator, tol, np.random.default_rng(seed).standard_normal(n))[0]


def _check_lanczos(operator: HessianOperator, tol: float, seed: int) -> tuple[float, int]:
    checks.instance("operator", operator, HessianOperator, "a metatune.stability.HessianOperator")
    return (checks.non_negative("tol", tol, note="the Lanczos tolerance; 0: machine precision"),
            checks.integer("seed", seed, low=0, note="the seed of the Lanczos start vector"))


def _top(operator: HessianOperator, tol: float, start: np.ndarray) -> tuple[float, bool]:
    """(λ_max, whether H = cI) from one identity check and one ``which="LA"`` Lanczos run."""
    multiple = _identity_multiple(operator, start)
    if multiple is not None:
        return multiple, True
    return float(eigsh(operator, k=1, which="LA", tol=tol, v0=start, return_eigenvectors=False)[0]), False


def _identity_multiple(operator: HessianOperator, start: np.ndarray) -> float | None:
    """c when H = cI (a random v₀ that H maps onto c·v₀), where Lanczos breaks down; else None."""
    image = operator.matvec(start)
    rayleigh = float(start @ image / (start @ start))
    if np.linalg.norm(image - rayleigh * start) <= 100.0 * operator.eps * np.linalg.norm(image):
        return rayleigh
    return None


def extreme_eigenvalues(
    operator: HessianOperator, *, tol: float = 1e-6, seed: int = 0
) -> tuple[float, float]:
    """(λ_min, λ_max), the algebraically smallest and largest eigenvalues of ``operator``.

    n ≤ :data:`DENSE_MAX_DIM`: exact, from the dense Hessian (n HVPs). Otherwise two
    Lanczos runs from one seeded start v₀: :func:`largest_eigenvalue`, then ``"SA"`` on
    H − λ_max I, so that ``tol`` (relative to the target) bounds λ_min's error by about
    tol·(λ_max − λ_min), the scale on which ρ depends, instead of demanding relative
    accuracy of a λ_min near zero. A random v₀ that H maps onto itself means H = cI,
    where Lanczos breaks down; then (c, c) is returned.
    """
    tol, seed = _check_lanczos(operator, tol, seed)
    n = operator.shape[0]
    if n <= DENSE_MAX_DIM:
        dense = np.column_stack([operator.matvec(column) for column in np.eye(n)])
        spectrum = np.linalg.eigvalsh((dense + dense.T) / 2.0)
        return float(spectrum[0]), float(spectrum[-1])
    start = np.random.default_rng(seed).standard_normal(n)
    top, identity = _top(operator, tol, start)
    if identity:
        return top, top
    shifted = operator - top * LinearOperator((n, n), matvec=lambda x: x, dtype=np.float64)
    bottom = float(eigsh(shifted, k=1, which="SA", tol=tol, v0=start, return_eigenvectors=False)[0])
    return min(bottom + top, top), top


def spectrum_ends(
    operator: HessianOperator, *, max_steps: int = 40, tol: float = 1e-3, seed: int = 0
) -> tuple[float, float]:
    """(θ₁, θₘ): the smallest and largest Ritz values of ``m ≤ max_steps`` Lanczos steps
    from a seeded random start (:func:`lanczos_quadrature`).

    θ₁ over-estimates λ_min by what m products cannot resolve, the low end of the spectrum a
    degree-m polynomial in H sees (on the κ = 1000 quadratic, m = 40 gives θ₁ ≈ 1.2 for
    λ_min = 1).

    Example:
        >>> hvp = lambda v: {"x": torch.tensor([1.0, 3.0, 9.0]) * v["x"]}
        >>> operator = HessianOperator(hvp, {"x": torch.zeros(3)})
        >>> [round(x, 6) for x in spectrum_ends(operator)]
        [1.0, 9.0]
    """
    nodes, _ = lanczos_quadrature(operator, max_steps=max_steps, tol=tol, seed=seed)
    return float(nodes[0]), float(nodes[-1])


def lanczos_quadrature(
    operator: HessianOperator, start: np.ndarray | None = None, *, max_steps: int = 40, tol: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of ``start``'s spectral measure: Ritz values θ₁ ≤ … ≤ θₘ and weights
    wⱼ = ‖v‖² sⱼ₁² (sⱼ₁ the first entry of Tₘ's j-th eigenvector) with Σⱼ wⱼ f(θⱼ) ≈ vᵀ f(H) v,
    exact for polynomials f of degree < 2m (Golub & Meurant, 2010). v = ``start``, or a
    seeded random vector where it is None or zero.

    One Krylov basis serves both ends. Lanczos (fully reorthogonalised) builds the
    tridiagonal Tₘ = Vₘᵀ H Vₘ; its eigenvalues lie inside [λ_min, λ_max], the ends
    converging first. Each Ritz value's residual ‖H y − θ y‖ = βₘ |sₘ| (sₘ the last entry of
    Tₘ's eigenvector) bounds its error. It stops once θₘ's residual is below ``tol``·|θₘ|
    and θ₁ is either converged the same way or ≤ 0 (a non-positive end: no condition number
    to resolve), after ``max_steps`` products, or when the Krylov space is exhausted.
    """
    tol, seed = _check_lanczos(operator, tol, seed)
    max_steps = checks.positive_int("max_steps", max_steps, note="Lanczos steps, one HVP each")
    n = operator.shape[0]
    vector = None if start is None else np.asarray(start, dtype=np.float64).reshape(-1)
    if vector is not None and vector.shape != (n,):
        raise invalid("start", vector.shape, f"a vector of {n} entries, one per parameter")
    if vector is None or not np.linalg.norm(vector) > 0 or not np.isfinite(vector).all():
        vector = np.random.default_rng(seed).standard_normal(n)
    norm = float(np.linalg.norm(vector))
    basis = [vector / norm]
    alphas: list[float] = []
    betas: list[float] = []
    while True:
        image = operator.matvec(basis[-1])
        alphas.append(float(basis[-1] @ image))
        for q in basis:  # full reorthogonalisation: m ≤ 100 vectors, cheap beside an HVP
            image -= (q @ image) * q
        beta = float(np.linalg.norm(image))
        values, vectors = _tridiagonal_eigen(alphas, betas)
        residual = beta * np.abs(vectors[-1])
        top_done = residual[-1] <= tol * abs(values[-1])
        low_done = values[0] <= 0 or residual[0] <= tol * abs(values[0])
        if (top_done and low_done) or len(alphas) >= min(max_steps, n) or beta <= operator.eps * abs(values[-1]):
            return values, norm * norm * vectors[0] ** 2
        betas.append(beta)
        basis.append(image / beta)


def _tridiagonal_eigen(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (α; β)."""
    matrix = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(matrix)
