"""Lanczos' spectrum ends against numpy's eigenvalues of explicit symmetric matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metatune.stability import HessianOperator, lanczos_quadrature, spectrum_ends


def _operator(matrix: np.ndarray) -> HessianOperator:
    tensor = torch.from_numpy(matrix)
    return HessianOperator(lambda v: {"x": tensor @ v["x"]}, {"x": torch.zeros(matrix.shape[0], dtype=torch.float64)})


def _matrix(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return rotation @ np.diag(eigenvalues) @ rotation.T


def test_small_matrix_ends_are_exact():
    """n ≤ max_steps: the Krylov space is the whole space, both ends to rounding."""
    eigenvalues = np.logspace(0, 3, 30)
    low, high = spectrum_ends(_operator(_matrix(eigenvalues, 0)), max_steps=40)
    assert low == pytest.approx(1.0, rel=1e-8) and high == pytest.approx(1000.0, rel=1e-10)


def test_large_matrix_top_converges_and_low_end_is_an_upper_bound():
    """n = 300 > 40 products: λ_max to the tolerance; θ₁ lies inside the spectrum (Cauchy
    interlacing), so it over-estimates λ_min, never under-estimates it."""
    eigenvalues = np.logspace(0, 3, 300)
    operator = _operator(_matrix(eigenvalues, 1))
    low, high = spectrum_ends(operator, max_steps=40, tol=1e-6)
    assert high == pytest.approx(1000.0, rel=1e-5)
    assert 1.0 <= low < 1000.0
    assert operator.evals <= 40


def test_stops_early_on_a_negative_low_end():
    """A saddle (negative λ_min) needs no low-end resolution: it stops once λ_max converged."""
    eigenvalues = np.concatenate([[-5.0], np.linspace(1.0, 50.0, 199)])
    operator = _operator(_matrix(eigenvalues, 2))
    low, high = spectrum_ends(operator, max_steps=100, tol=1e-3)
    assert low < 0 and high == pytest.approx(50.0, rel=1e-3)
    assert operator.evals < 100


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10.0, 10.0), min_size=2, max_size=25, unique=True), st.integers(0, 10_000))
def test_ends_match_numpy_when_the_space_is_exhausted(values, seed):
    eigenvalues = np.array(values)
    if np.ptp(eigenvalues) < 1e-3:
        return
    low, high = spectrum_ends(_operator(_matrix(eigenvalues, seed)), max_steps=len(values), tol=1e-12)
    scale = np.abs(eigenvalues).max()
    assert abs(high - eigenvalues.max()) <= 1e-8 * scale
    if eigenvalues.min() > 1e-8 * scale:
        assert abs(low - eigenvalues.min()) <= 1e-8 * scale
    else:  # a non-positive end stops the run once θ₁ ≤ 0: θ₁ lies in [λ_min, 0] (interlacing)
        assert eigenvalues.min() - 1e-8 * scale <= low <= 1e-8 * scale


def test_quadrature_integrates_polynomials_of_degree_below_2m_exactly():
    """m = 6 products on a 40-dimensional H: Σ wⱼ θⱼᵏ = vᵀ Hᵏ v for k < 12 (Gauss), computed
    against numpy's matrix powers; k = 2m is not exact."""
    matrix = _matrix(np.linspace(1.0, 20.0, 40), 3)
    start = np.random.default_rng(4).standard_normal(40)
    nodes, weights = lanczos_quadrature(_operator(matrix), start, max_steps=6, tol=0.0)
    assert len(nodes) == 6 and np.all(np.diff(nodes) > 0)
    for k in range(12):
        exact = start @ np.linalg.matrix_power(matrix, k) @ start
        assert weights @ nodes**k == pytest.approx(exact, rel=1e-10)
    assert abs(weights @ nodes**12 - start @ np.linalg.matrix_power(matrix, 12) @ start) > 1e-8 * (weights @ nodes**12)


def test_quadrature_of_an_exhausted_space_is_the_start_vectors_spectral_measure():
    """m = n: the nodes are H's eigenvalues and each weight is the squared component of the
    start vector along that eigenvector (numpy's eigh)."""
    eigenvalues = np.array([0.5, 1.0, 3.0, 7.0, 11.0])
    matrix = _matrix(eigenvalues, 5)
    start = np.random.default_rng(6).standard_normal(5)
    nodes, weights = lanczos_quadrature(_operator(matrix), start, max_steps=5, tol=0.0)
    values, vectors = np.linalg.eigh(matrix)
    assert nodes == pytest.approx(values, rel=1e-10)
    assert weights == pytest.approx((vectors.T @ start) ** 2, rel=1e-8)


def test_quadrature_from_a_zero_start_uses_the_seeded_random_one():
    """A zero gradient (θ₀ at a stationary point) has no spectral measure: the seeded random
    start serves, as in spectrum_ends."""
    operator = _operator(_matrix(np.linspace(1.0, 9.0, 12), 7))
    nodes, weights = lanczos_quadrature(operator, np.zeros(12), max_steps=12, tol=0.0, seed=3)
    random = np.random.default_rng(3).standard_normal(12)
    assert weights.sum() == pytest.approx(random @ random, rel=1e-10)
    assert (nodes[0], nodes[-1]) == pytest.approx(spectrum_ends(operator, max_steps=12, tol=0.0, seed=3), rel=1e-10)
