"""Tests of metatune.stability against independent oracles.

Oracles: numpy eigenvalues of the explicit 2n×2n transition matrix of the state (θ, v),
numpy eigenvalues of a Hessian built on purpose, torch.autograd's Hessian, brute-force
grids, and plain :func:`metatune.unroll.unroll`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metatune import stability
from metatune.unroll import unroll

torch.set_num_threads(1)

ETAS_BETAS = [(0.05, 0.0), (0.1, 0.5), (0.3, 0.9), (0.45, 0.2), (0.9, 0.7), (0.02, 0.99)]


# --- oracles -----------------------------------------------------------------------------------


def rotated(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """Q diag(λ) Qᵀ with a random orthogonal Q (not diagonal)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return (q * eigenvalues) @ q.T


def transition_matrix(hessian: np.ndarray, lr: float, momentum: float, nesterov: bool) -> np.ndarray:
    """The linear map (θ, v) → (θ', v') of one step on the quadratic ½ θᵀHθ.

    heavy ball: v' = βv + Hθ, θ' = θ − ηv' = (I − ηH)θ − ηβ v
    Nesterov:   v' = βv + Hθ, θ' = θ − η(Hθ + βv') = (I − η(1+β)H)θ − ηβ² v
    """
    eye = np.eye(len(hessian))
    if nesterov:
        top = np.hstack([eye - lr * (1 + momentum) * hessian, -lr * momentum**2 * eye])
    else:
        top = np.hstack([eye - lr * hessian, -lr * momentum * eye])
    return np.vstack([top, np.hstack([hessian, momentum * eye])])


def matrix_radius(hessian: np.ndarray, lr: float, momentum: float, nesterov: bool) -> float:
    return float(np.abs(np.linalg.eigvals(transition_matrix(hessian, lr, momentum, nesterov))).max())


def quadratic(matrix: np.ndarray):  # noqa: ANN201
    """½ θᵀAθ with θ split over a matrix and a vector (to exercise flattening), and θ₀."""
    a = torch.tensor(matrix, dtype=torch.float64)
    n = len(matrix)
    cut = n // 2

    def loss(params, batch):  # noqa: ANN001, ANN202
        theta = torch.cat([params["w"].reshape(-1), params["b"]])
        return 0.5 * theta @ a @ theta

    theta0 = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    params = {"w": theta0[:cut].clone().reshape(cut, 1), "b": theta0[cut:].clone()}
    return loss, params


# --- closed form vs the transition matrix --------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("lr, momentum", ETAS_BETAS + [(2.5, 0.5), (5.0, 0.1)])
def test_spectral_radius_matches_transition_matrix(lr: float, momentum: float, nesterov: bool) -> None:
    eigenvalues = np.array([-0.3, 0.01, 0.5, 1.0, 2.0, 3.0])
    hessian = rotated(eigenvalues, seed=1)
    expected = matrix_radius(hessian, lr, momentum, nesterov)
    got = stability.spectral_radius(lr, momentum, eigenvalues, nesterov)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-9)


def test_spectral_radius_array_likes_and_grid() -> None:
    eigenvalues = [0.2, 1.0, 4.0]
    reference = stability.spectral_radius(0.3, 0.6, eigenvalues)
    for form in (np.array(eigenvalues), torch.tensor(eigenvalues), tuple(eigenvalues)):
        assert stability.spectral_radius(0.3, 0.6, form) == reference
    as_tensors = stability.spectral_radius(torch.tensor(0.3), torch.tensor(0.6), eigenvalues)
    assert as_tensors == pytest.approx(reference)
    lrs, betas = np.meshgrid(np.linspace(0.05, 1.0, 4), np.linspace(0.0, 0.95, 3), indexing="ij")
    grid = stability.spectral_radius(lrs, betas, eigenvalues, nesterov=True)
    assert grid.shape == (4, 3)
    for index in np.ndindex(grid.shape):
        hessian = np.diag(eigenvalues)
        assert grid[index] == pytest.approx(matrix_radius(hessian, lrs[index], betas[index], True), rel=1e-9)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_critical_lr_separates_stable_from_unstable(momentum: float, nesterov: bool) -> None:
    """±0.01 % around the critical lr, judged by numpy eigenvalues of the 6×6 transition matrix.
    Near ηλ = 2(1+β) the root at −1 moves by about 2(1+β)ε/(1−β) for a relative step ε
    (heavy ball), ≥ 2e-4 here: far above rounding."""
    eigenvalues = np.array([0.1, 0.7, 5.0])
    limit = stability.critical_lr(eigenvalues.max(), momentum, nesterov)
    hessian = rotated(eigenvalues, seed=2)
    assert matrix_radius(hessian, (1 - 1e-4) * limit, momentum, nesterov) < 1
    assert matrix_radius(hessian, (1 + 1e-4) * limit, momentum, nesterov) > 1


@pytest.mark.parametrize(
    "lam, momentum, nesterov, expected",
    [(4.0, 0.5, False, 0.75),  # 2 · 1.5 / 4
     (5.0, 0.9, False, 0.76),  # 2 · 1.9 / 5
     (4.0, 0.5, True, 0.375),  # 2 · 1.5 / (2 · 4)
     (5.0, 0.9, True, 0.76 / 2.8),  # 2 · 1.9 / (2.8 · 5)
     (2.0, 0.0, True, 1.0)],  # 2 / 2 either way
)
def test_critical_lr_worked_by_hand(lam: float, momentum: float, nesterov: bool, expected: float) -> None:
    assert stability.critical_lr(lam, momentum, nesterov) == pytest.approx(expected, rel=1e-14)


def test_critical_lr_without_positive_curvature_is_infinite() -> None:
    assert stability.critical_lr(0.0, 0.5) == math.inf
    assert stability.critical_lr(-2.0, 0.5, nesterov=True) == math.inf


# --- properties --------------------------------------------------------------------------------

curvature = st.floats(1e-3, 1e3)
momentum_st = st.floats(0.0, 0.99)
away_from_boundary = st.one_of(st.floats(0.01, 0.98), st.floats(1.02, 3.0))


@settings(max_examples=200, deadline=None)
@given(lam=curvature, momentum=momentum_st, ratio=away_from_boundary, nesterov=st.booleans())
def test_stability_bound(lam: float, momentum: float, ratio: float, nesterov: bool) -> None:
    bound = 2 * (1 + momentum) / (1 + 2 * momentum) if nesterov else 2 * (1 + momentum)
    lr = ratio * bound / lam
    assert (stability.spectral_radius(lr, momentum, [lam], nesterov) < 1) == (ratio < 1)


@settings(max_examples=200, deadline=None)
@given(lam=curvature, momentum=st.floats(0.01, 0.99), t=st.floats(0.01, 0.99))
def test_underdamped_modes_have_modulus_sqrt_beta(lam: float, momentum: float, t: float) -> None:
    low, high = (1 - math.sqrt(momentum)) ** 2, (1 + math.sqrt(momentum)) ** 2
    lr = (low + t * (high - low)) / lam
    assert stability.regime(lr, momentum, lam) == "underdamped"
    assert stability.spectral_radius(lr, momentum, [lam]) == pytest.approx(math.sqrt(momentum), rel=1e-9)
    assert stability.regime(0.5 * low / lam, momentum, lam) == "overdamped"
    assert stability.regime(low / lam, momentum, lam) == "critically damped"


@settings(max_examples=100, deadline=None)
@given(
    low=st.floats(-1.0, 5.0), width=st.floats(0.0, 50.0), lr=st.floats(0.01, 1.0),
    momentum=momentum_st, nesterov=st.booleans(),
)
def test_radius_over_an_interval_is_at_an_end(
    low: float, width: float, lr: float, momentum: float, nesterov: bool
) -> None:
    inside = np.linspace(low, low + width, 400)
    ends = stability.spectral_radius(lr, momentum, [low, low + width], nesterov)
    assert stability.spectral_radius(lr, momentum, inside, nesterov) <= ends * (1 + 1e-12)


@pytest.mark.parametrize(
    "lr, momentum, lam", [(0.3, 0.5, 2.0), (1.0, 0.9, 0.5), (0.1, 0.2, 20.0), (2.0, 0.7, 3.0)]
)
@pytest.mark.parametrize("nesterov", [False, True])
def test_regime_matches_transition_matrix(lr: float, momentum: float, lam: float, nesterov: bool) -> None:
    mu = np.linalg.eigvals(transition_matrix(np.array([[lam]]), lr, momentum, nesterov))
    expected = "underdamped" if abs(mu[0].imag) > 1e-12 else "overdamped"
    assert stability.regime(lr, momentum, lam, nesterov) == expected


def test_damping_ratio_limits() -> None:
    # the exact discrete critical damping ηλ = (1 − √β)² tends to ζ = 1 as β → 1
    for momentum, tolerance in [(0.9, 0.06), (0.99, 0.006), (0.999, 6e-4)]:
        zeta = stability.damping_ratio(1.0, momentum, (1 - math.sqrt(momentum)) ** 2)
        assert abs(zeta - 1) < tolerance
    assert stability.damping_ratio(0.1, 0.5, 0.0) == math.inf
    assert math.isnan(stability.damping_ratio(0.1, 0.5, -1.0))
    assert stability.damping_ratio(0.1, 0.5, 4.0) > stability.damping_ratio(0.1, 0.5, 9.0)


# --- optimal heavy ball --------------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(1.0, 10.0), (0.5, 200.0), (2.0, 2.0)])
def test_optimal_hyperparameters_minimise_radius(low: float, high: float) -> None:
    lr, momentum = stability.optimal_hyperparameters(low, high)
    spectrum = np.linspace(low, high, 60)
    best = stability.spectral_radius(lr, momentum, spectrum)
    assert best == pytest.approx(math.sqrt(momentum), abs=1e-7)
    lrs, betas = np.meshgrid(np.geomspace(0.05 / high, 4.0 / high, 120), np.linspace(0.0, 0.99, 100))
    grid = stability.spectral_radius(lrs, betas, spectrum)
    assert best <= grid.min() + 1e-9
    quoted = 2 / (low * (1 + math.sqrt(high / low)) ** 2)  # half of η*: not optimal
    if high > low:
        assert stability.spectral_radius(quoted, momentum, spectrum) > best + 1e-3


@pytest.mark.parametrize(
    "low, high, lr, momentum",
    [(1.0, 9.0, 0.25, 0.25),  # √κ = 3: β* = (2/4)², η* = 4/(3 + 1)²
     (1.0, 100.0, 4 / 121, 81 / 121),  # √κ = 10: β* = (9/11)², η* = 4/(10 + 1)²
     (0.25, 4.0, 4 / 6.25, 0.36),  # √κ = 4: β* = (3/5)², η* = 4/(2 + 0.5)²
     (2.0, 2.0, 0.5, 0.0)],  # κ = 1: no momentum, η* = 4/(2√2)² = 1/λ
)
def test_optimal_hyperparameters_worked_by_hand(low: float, high: float, lr: float, momentum: float) -> None:
    got = stability.optimal_hyperparameters(low, high)
    assert got[0] == pytest.approx(lr, rel=1e-14) and got[1] == pytest.approx(momentum, rel=1e-14, abs=1e-15)


@pytest.mark.parametrize("low, high", [(1.0, 10.0), (0.5, 200.0), (3.0, 7.0)])
def test_optimal_hyperparameters_put_both_ends_at_a_double_root(low: float, high: float) -> None:
    """Polyak's optimum balances the two ends: at λ_min and at λ_max the 2×2 transition has a
    double eigenvalue of modulus √β* (oracle: numpy eigenvalues). A 0.5 % error in η* or β*
    splits a double root by ~√0.005 ≫ the tolerance."""
    lr, momentum = stability.optimal_hyperparameters(low, high)
    for lam in (low, high):
        mu = np.linalg.eigvals(transition_matrix(np.array([[lam]]), lr, momentum, nesterov=False))
        assert abs(mu[0] - mu[1]) < 1e-6
        assert np.abs(mu) == pytest.approx([math.sqrt(momentum)] * 2, abs=1e-6)


# --- Hessian spectrum ----------------------------------------------------------------------------


def test_hessian_vector_product_matches_autograd_hessian() -> None:
    def loss(params, batch):  # noqa: ANN001, ANN202
        return (torch.sin(params["a"]) * params["b"] ** 2).sum() + (params["a"] ** 4).sum() * batch

    f64 = {"dtype": torch.float64}
    params = {"a": torch.tensor([0.3, -1.2, 0.7], **f64), "b": torch.tensor([2.0, 0.5, -1.0], **f64)}
    flat = torch.cat([params["a"], params["b"]])
    dense = torch.autograd.functional.hessian(lambda x: loss({"a": x[:3], "b": x[3:]}, 0.5), flat)
    vector = {"a": torch.tensor([1.0, -2.0, 0.5], **f64), "b": torch.tensor([0.1, 3.0, -1.0], **f64)}
    hv = stability.hessian_vector_product(loss, params, batch=0.5)(vector)
    expected = dense @ torch.cat([vector["a"], vector["b"]])
    torch.testing.assert_close(torch.cat([hv["a"], hv["b"]]), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, nesterov", [(2, False), (20, True), (21, False), (30, False), (30, True)])
def test_estimate_on_a_rotated_quadratic(n: int, nesterov: bool) -> None:
    eigenvalues = np.concatenate([[0.1, 10.0], np.random.default_rng(n).uniform(0.5, 8.0, n - 2)])
    loss, params = quadratic(rotated(eigenvalues, seed=n))
    lr, momentum = 0.15, 0.6
    rep = stability.estimate(loss, params, lr, momentum, nesterov=nesterov)
    assert rep.lambda_max == pytest.approx(10.0, rel=1e-6)
    assert rep.lambda_min == pytest.approx(0.1, rel=1e-6)
    true_radius = matrix_radius(rotated(eigenvalues, seed=n), lr, momentum, nesterov)
    assert rep.spectral_radius == pytest.approx(true_radius, rel=1e-6)
    # 2(1 + β)/λ_max = 3.2/10; Nesterov also / (1 + 2β) = 2.2
    assert rep.critical_lr == pytest.approx(0.32 / 2.2 if nesterov else 0.32, rel=1e-6)
    assert rep.stable == (rep.spectral_radius < 1) == (not nesterov)  # Nesterov: 0.15 > 0.32/2.2
    assert not rep.saddle
    # μ² − bμ + c at ηλ_max = 1.5: heavy ball b = 1.6 − 1.5 = 0.1, c = 0.6, b² < 4c: complex roots;
    # Nesterov b = 1.6 · (−0.5) = −0.8, c = 0.6 · (−0.5) = −0.3, b² − 4c = 1.84 > 0: real.
    # At ηλ_min = 0.015: b = 1.585, b² = 2.51 > 4c = 2.4 (heavy ball); b = 1.576, c = 0.591,
    # b² = 2.48 > 2.364 (Nesterov): real either way.
    assert rep.regime_max == ("overdamped" if nesterov else "underdamped")
    assert rep.regime_min == "overdamped"
    # ζ = (1 − β)/(2√(ηλ)) = 0.2/√(ηλ): 0.2/√0.015 at λ_min, 0.2/√1.5 at λ_max
    assert rep.damping_ratio_min == pytest.approx(0.2 / math.sqrt(0.015), rel=1e-6)
    assert rep.damping_ratio_max == pytest.approx(0.2 / math.sqrt(1.5), rel=1e-6)
    assert (rep.lr, rep.momentum, rep.nesterov) == (lr, momentum, nesterov)
    if n <= 20:  # exact dense Hessian from n HVPs
        assert rep.hvp_evals == n
    else:
        assert 0 < rep.hvp_evals < 20 * n
    lr_t, momentum_t = torch.tensor(lr, dtype=torch.float64), torch.tensor(momentum, dtype=torch.float64)
    again = stability.estimate(loss, params, lr_t, momentum_t, nesterov=nesterov)
    assert again == rep  # seeded: reproducible


@pytest.mark.parametrize("n", [2, 30])
def test_estimate_reports_saddles_apart_from_instability(n: int) -> None:
    eigenvalues = np.concatenate([[-0.5, 4.0], np.linspace(0.2, 3.0, n - 2)])
    loss, params = quadratic(rotated(eigenvalues, seed=3))
    limit = 0.75  # 2(1 + β)/λ_max = 3/4
    calm = stability.estimate(loss, params, 0.9 * limit, 0.5)
    assert calm.saddle and calm.stable
    assert calm.lambda_min == pytest.approx(-0.5, rel=1e-6)
    assert calm.spectral_radius > 1  # escape along the negative direction...
    escape = matrix_radius(np.array([[-0.5]]), 0.9 * limit, 0.5, nesterov=False)
    assert calm.spectral_radius == pytest.approx(escape, rel=1e-6)
    wild = stability.estimate(loss, params, 1.1 * limit, 0.5)
    assert wild.saddle and not wild.stable  # ...but divergence comes from curvature only


def test_estimate_on_identity_and_zero_hessians() -> None:
    for scale in (3.0, 0.0):
        loss, params = quadratic(scale * np.eye(40))
        rep = stability.estimate(loss, params, 0.1, 0.5)
        assert rep.lambda_min == pytest.approx(scale, abs=1e-12)
        assert rep.lambda_max == pytest.approx(scale, abs=1e-12)
        assert not rep.saddle


def test_estimate_in_float32() -> None:
    eigenvalues = np.concatenate([[0.1, 10.0], np.linspace(1.0, 8.0, 38)])
    loss64, params64 = quadratic(rotated(eigenvalues, seed=4))
    a = torch.tensor(rotated(eigenvalues, seed=4), dtype=torch.float32)

    def loss(params, batch):  # noqa: ANN001, ANN202
        theta = torch.cat([params["w"].reshape(-1), params["b"]])
        return 0.5 * theta @ a @ theta

    params = {name: p.float() for name, p in params64.items()}
    rep = stability.estimate(loss, params, 0.1, 0.5)
    assert rep.lambda_max == pytest.approx(10.0, rel=1e-5)
    assert rep.lambda_min == pytest.approx(0.1, abs=1e-4)


# --- along a run ---------------------------------------------------------------------------------


def test_along_run_below_critical() -> None:
    loss, params = quadratic(rotated(np.linspace(0.5, 4.0, 25), seed=5))
    lr = 0.8 * stability.critical_lr(4.0, 0.7)
    report = stability.along_run(loss, params, lr, 0.7, steps=25, every=10)
    assert report.steps_checked == [0, 10, 20, 25]
    assert report.stable and not report.diverged and not report.saddle_seen
    assert report.max_spectral_radius == max(report.spectral_radii) < 1
    assert report.lambda_max == pytest.approx([4.0] * 4, rel=1e-6)
    whole = unroll(loss, params, lr, 0.7, steps=25)
    for name in params:
        torch.testing.assert_close(report.run.params[name], whole.params[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(report.run.losses, whole.losses, rtol=1e-12, atol=1e-14)


def test_along_run_uses_the_batch_of_each_step() -> None:
    def loss(params, batch):  # noqa: ANN001, ANN202
        return 0.5 * batch * (params["x"] ** 2).sum()

    params = {"x": torch.ones(3, dtype=torch.float64)}
    report = stability.along_run(loss, params, 0.1, 0.5, steps=4, batches=[1.0, 2.0, 3.0, 4.0], every=2)
    assert report.lambda_max == pytest.approx([1.0, 3.0, 4.0])


@pytest.mark.parametrize("nesterov", [False, True])
def test_along_run_above_critical_diverges_without_raising(nesterov: bool) -> None:
    loss, params = quadratic(rotated(np.linspace(0.5, 4.0, 25), seed=6))
    lr = 3.0 * stability.critical_lr(4.0, 0.5, nesterov)
    report = stability.along_run(loss, params, lr, 0.5, steps=3000, nesterov=nesterov, every=100)
    assert report.diverged and not report.stable
    assert report.max_spectral_radius == math.inf
    assert report.spectral_radii[0] > 1
    assert math.isnan(report.lambda_max[-1])
    assert report.steps_checked[-1] < 3000
    assert len(report.run.losses) == report.steps_checked[-1]
    assert not torch.isfinite(report.run.losses).all()  # θᵀAθ overflows to inf/NaN first


def test_along_run_stops_where_curvature_is_not_finite() -> None:
    def loss(params, batch):  # noqa: ANN001, ANN202
        x = params["x"]
        return (x.abs() ** 1.5).sum() if batch == "kink" else (x**2).sum()

    # lr = 0.5, β = 0 on x² lands exactly on x = 0, where |x|^1.5 has infinite curvature
    report = stability.along_run(loss, {"x": torch.ones(3, dtype=torch.float64)}, 0.5, 0.0, steps=3,
                                 batches=["quad", "kink", "quad"], every=1)
    assert report.steps_checked == [0, 1]
    assert report.diverged and not report.stable and report.max_spectral_radius == math.inf
    assert len(report.run.losses) == 1
    with pytest.raises(stability.NonFiniteCurvatureError, match=r"^params"):
        stability.estimate(loss, report.run.params, 0.5, 0.0, batch="kink")


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf])
def test_bad_lr(lr: float) -> None:
    loss, params = quadratic(np.eye(4))
    with pytest.raises(ValueError, match=r"^lr="):
        stability.estimate(loss, params, lr, 0.5)
    with pytest.raises(ValueError, match=r"^lr="):
        stability.spectral_radius(lr, 0.5, [1.0])
    with pytest.raises(ValueError, match=r"^lr="):
        stability.along_run(loss, params, lr, 0.5, steps=2)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, math.nan])
def test_bad_momentum(momentum: float) -> None:
    loss, params = quadratic(np.eye(4))
    with pytest.raises(ValueError, match=r"^momentum="):
        stability.estimate(loss, params, 0.1, momentum)
    with pytest.raises(ValueError, match=r"^momentum\[1\]="):
        stability.spectral_radius(0.1, np.array([0.5, momentum]), [1.0])
    with pytest.raises(ValueError, match=r"^momentum="):
        stability.critical_lr(1.0, momentum)


def test_non_scalar_loss() -> None:
    def loss(params, batch):  # noqa: ANN001, ANN202
        return params["x"] ** 2

    with pytest.raises(ValueError, match=r"train_loss"):
        stability.estimate(loss, {"x": torch.ones(3, dtype=torch.float64)}, 0.1, 0.5)


def test_non_finite_params() -> None:
    loss, params = quadratic(np.eye(4))
    params["b"][0] = math.nan
    with pytest.raises(ValueError, match=r"params\['b'\]"):
        stability.estimate(loss, params, 0.1, 0.5)


@pytest.mark.parametrize("low, high", [(2.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0)])
def test_bad_eigenvalue_range(low: float, high: float) -> None:
    with pytest.raises(ValueError, match=r"^lambda_min="):
        stability.optimal_hyperparameters(low, high)


def test_other_bad_arguments() -> None:
    loss, params = quadratic(np.eye(4))
    with pytest.raises(ValueError, match=r"^eigenvalues="):
        stability.spectral_radius(0.1, 0.5, [])
    with pytest.raises(ValueError, match=r"^eigenvalues\[1\]=inf"):
        stability.spectral_radius(0.1, 0.5, [1.0, math.inf])
    with pytest.raises(ValueError, match=r"^every="):
        stability.along_run(loss, params, 0.1, 0.5, steps=4, every=0)
    with pytest.raises(ValueError, match=r"^nesterov="):
        stability.estimate(loss, params, 0.1, 0.5, nesterov="yes")
    with pytest.raises(ValueError, match=r"^tol="):
        stability.estimate(loss, params, 0.1, 0.5, tol=-1.0)
    with pytest.raises(ValueError, match=r"^lr="):
        stability.estimate(loss, params, {"w": 0.1, "b": 0.2}, 0.5)


@pytest.mark.parametrize(("lr", "momentum", "steps"), [(0.05, 0.0, 1), (0.05, 0.9, 40), (0.015, 0.6, 25)])
def test_horizon_loss_is_what_torch_sgd_reaches_on_the_quadratic(lr: float, momentum: float, steps: int) -> None:
    """ℓ(θ_T) − ℓ* of ``torch.optim.SGD`` on ½ (θ − θ*)ᵀ A (θ − θ*) equals the model's prediction
    from A's eigenvalues and the squared components of g₀ = A (θ₀ − θ*) along its eigenvectors."""
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigenvalues = np.array([0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
    matrix = torch.from_numpy(rotation @ np.diag(eigenvalues) @ rotation.T)
    optimum, theta = torch.from_numpy(rng.standard_normal(6)), torch.from_numpy(rng.standard_normal(6))
    gradient = (matrix @ (theta - optimum)).numpy()
    x = theta.clone().requires_grad_()
    optimizer = torch.optim.SGD([x], lr=lr, momentum=momentum)
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (x - optimum) @ matrix @ (x - optimum)).backward()
        optimizer.step()
    reached = float(0.5 * (x.detach() - optimum) @ matrix @ (x.detach() - optimum))
    predicted = stability.horizon_loss(lr, momentum, eigenvalues, (rotation.T @ gradient) ** 2, steps)
    assert float(predicted) == pytest.approx(reached, rel=1e-9)


def test_horizon_loss_over_a_grid_marks_divergence_and_skips_non_positive_nodes() -> None:
    """Broadcast over (η, β); inf past the critical lr (ρ ≥ 1 there); a node ≤ 0 is left out."""
    lrs, momenta = np.array([[0.1], [1.5]]), np.array([0.0, 0.5])
    values = stability.horizon_loss(lrs, momenta, [-1.0, 1.0], [5.0, 2.0], 2000)
    assert values.shape == (2, 2)
    single = [[float(stability.horizon_loss(lr, m, [1.0], [2.0], 2000)) for m in (0.0, 0.5)] for lr in (0.1, 1.5)]
    assert values[0].tolist() == pytest.approx(single[0], rel=1e-12)
    assert math.isfinite(values[0, 0]) and values[0, 0] == pytest.approx(0.5 * 2.0 * 0.9**4000, rel=1e-9)
    assert values[1, 0] < 1e-100  # η = 1.5 < 2/λ at β = 0: |1 − ηλ| = 0.5
    assert math.isinf(float(stability.horizon_loss(2.5, 0.0, [1.0], [2.0], 2000)))  # |1 − ηλ| = 1.5


def test_along_a_schedule_each_check_uses_that_steps_hyperparameters() -> None:
    """A K = 3 knot schedule on a quadratic (the Hessian, so λ_max = 4, is the same at every θ):
    at each knot step ρ equals the explicit transition matrix's at (η_t, β_t), the critical lr
    is 2(1 + β_t)/4, and exactly the steps whose η_t (interpolated by hand, log-linear) reaches
    the critical lr of the last check are flagged; the run equals the scheduled unroll."""
    from metatune.schedule import Knots

    hessian = rotated(np.linspace(0.5, 4.0, 12), seed=7)
    loss, params = quadratic(hessian)
    steps, lr_knots, momentum_knots = 21, [0.2, 0.9, 0.1], [0.3, 0.6, 0.0]
    report = stability.along_run(loss, params, Knots(lr_knots), Knots(momentum_knots), steps, at=[10, 20])
    assert report.steps_checked == [0, 10, 20, 21]  # the knots, and the end (at the last step's η, β)
    assert report.lrs == pytest.approx([*lr_knots, lr_knots[-1]], rel=1e-12)
    assert report.momenta == pytest.approx([*momentum_knots, momentum_knots[-1]], abs=1e-12)
    for lr, momentum, rho, critical in zip(report.lrs, report.momenta, report.spectral_radii, report.critical_lrs):
        assert rho == pytest.approx(matrix_radius(hessian, lr, momentum, False), rel=1e-6)
        assert critical == pytest.approx(2 * (1 + momentum) / 4.0, rel=1e-6)
    path = [math.exp(np.interp(t, [0, 10, 20], np.log(lr_knots))) for t in range(steps)]
    last_critical = [2 * (1 + (momentum_knots[0] if t < 10 else momentum_knots[1] if t < 20 else 0.0)) / 4.0
                     for t in range(steps)]
    expected = [t for t in range(steps) if path[t] >= last_critical[t]]
    assert 0 < len(expected) < steps  # the schedule passes the limit over part of the run only
    assert report.unstable_steps == expected
    assert not report.stable  # knot 1 (η = 0.9 > 2(1 + 0.6)/4 = 0.8) is past it
    whole = unroll(loss, params, Knots(lr_knots), Knots(momentum_knots), steps)
    for name in params:
        torch.testing.assert_close(report.run.params[name], whole.params[name], rtol=1e-12, atol=1e-14)
