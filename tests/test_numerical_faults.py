"""Numerical faults inside trials. For every seeded method: learning rates past the critical
bound and momentum up to 0.999 on a quadratic whose runs overflow, and gradients that turn NaN
partway through a run when an entropy term leaves its domain (also where the validation loss
maps NaN parameters to a finite number). Such trials are recorded diverged with inf and ρ (ρ
checked against numpy's eigenvalues of the heavy-ball transition, values against
torch.optim.SGD), and every method ends with a finite best point that trains. For metagrad
also: meta-gradients that explode or overflow while the loss stays bounded (chaotic runs) are
never accepted, each such step is halved, and the meta-gradients it does move on match
forward-mode tangents written out in numpy; a loss that rounds to 0 ends its chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metatune import objectives
from metatune.objectives import Objective, SearchSpace
from metatune.point import MetaGradient, Point
from metatune.tuners import TrialStatus
from metatune.tuners.chains import MetagradChains
from metatune.tuning import tune

METHODS = ["tpe", "random", "cmaes", "gp", "grid", "metagrad"]
MAX_AMPLIFICATION = 1e8
"""metagrad rejects a step whose sensitivities grew more than this (its ``max_amplification``)."""


def heavy_ball_radius(lr: float, momentum: float, curvature: float) -> float:
    """ρ of [[1 + β − ηλ, −β], [1, 0]], the transition of heavy ball on curvature λ."""
    transition = np.array([[1.0 + momentum - lr * curvature, -momentum], [1.0, 0.0]])
    return float(np.max(np.abs(np.linalg.eigvals(transition))))


@pytest.mark.parametrize("method", METHODS)
def test_runs_that_overflow_are_recorded_diverged_with_rho_and_the_best_is_stable(method):
    steep = objectives.get("quadratic", dim=10, kappa=100.0, steps=100)  # λ_max = 100
    space = objectives.SearchSpace(lr_low=1e-4, lr_high=10.0, momentum_low=0.0, momentum_high=0.999)
    result = tune(steep, method, budget=101 * 30, seed=0, space=space)
    diverged = [t for t in result.trials if t.diverged]
    assert diverged or method == "metagrad"  # metagrad's guard keeps its chains under the critical lr
    for trial in diverged:
        assert trial.status == "diverged" and trial.value == math.inf and not trial.stable
    for trial in result.trials:  # ρ over both ends of the spectrum (κ = 100), by numpy's eigenvalues
        ends = (trial.lambda_max, trial.lambda_max / 100.0)
        assert trial.spectral_radius == pytest.approx(max(heavy_ball_radius(trial.lr, trial.momentum, lam)
                                                          for lam in ends), rel=1e-3)
    past = [t for t in result.trials if t.lr > 2 * (1 + t.momentum) / t.lambda_max * 1.01]
    assert all(t.spectral_radius > 1 for t in past)
    best = result.best
    assert best is not None and math.isfinite(best.value) and best.status == "completed"
    assert best.value < 1e-2 * float(steep.val_loss(steep.init_params(0)))


# -- gradients that turn NaN partway through a run ---------------------------------------------

ENTROPY, CAP, DECONVOLUTION_STEPS = 0.05, 10.0, 100
SPECTRUM = torch.logspace(0.0, 1.0, 12, dtype=torch.float64)  # eigenvalues of AᵀA/m


def deconvolution(validation: str) -> Objective:
    """Maximum-entropy deconvolution: ℓ(p) = ½ mean((A p − b)²) + τ Σⱼ pⱼ log pⱼ, p > 0, from p₀ = 1.

    A = U diag(s) Vᵀ with AᵀA/m = V diag(:data:`SPECTRUM`) Vᵀ, so the Hessian at p₀ (where
    ∇²(τ p log p) = τ/p = τ) has the eigenvalues SPECTRUM + τ exactly. The entropy's curvature
    τ/pⱼ grows as a small pⱼ nears 0, so a step that is stable at p₀ can carry pⱼ below 0;
    log pⱼ is then NaN and so is its gradient τ(1 + log pⱼ), and every later step is NaN.
    The validation loss is the held-out rows' ½ mean(r²) ("plain": NaN parameters give NaN),
    or the truncated quadratic ½ mean(min(r², c²)) written with ``torch.where`` as robust
    code writes it ("capped": NaN parameters give the finite ½c², as NaN < c is False).
    """
    generator = torch.Generator().manual_seed(0)

    def gaussian(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    size, rows = len(SPECTRUM), 3 * len(SPECTRUM)
    basis, held_out, rotation = (torch.linalg.qr(gaussian(*shape))[0]  # orthonormal columns
                                 for shape in [(rows, size), (rows, size), (size, size)])
    scale = torch.diag(torch.sqrt(rows * SPECTRUM)) @ rotation.T  # AᵀA/m = V Λ Vᵀ for A = basis @ scale
    truth = torch.logspace(-2.0, math.log10(2.0), size, dtype=torch.float64)
    truth = truth[torch.randperm(size, generator=generator)]  # spread from 0.01 to 2, in no order
    design, val_design = basis @ scale, held_out @ scale
    target = design @ truth + 0.01 * gaussian(rows)

    def train_loss(params, batch=None):
        p = params["p"]
        return 0.5 * ((design @ p - target) ** 2).mean() + ENTROPY * (p * torch.log(p)).sum()

    def val_loss(params):
        r = val_design @ (params["p"] - truth)
        capped = torch.where(r.abs() < CAP, r**2, torch.full_like(r, CAP**2))
        return 0.5 * (r**2 if validation == "plain" else capped).mean()

    def init_params(seed: int) -> dict:
        return {"p": torch.ones(size, dtype=torch.float64)}

    return Objective("deconvolution", "maximum-entropy deconvolution", init_params, train_loss, val_loss,
                     lambda seed, steps: None, SearchSpace(lr_low=1e-4, lr_high=1.0, momentum_high=0.99),
                     steps=DECONVOLUTION_STEPS)


def sgd(objective: Objective, lr: float, momentum: float) -> tuple[int | None, dict]:
    """torch.optim.SGD from θ₀ for T steps: the first step whose training loss is not finite
    (None if none) and θ_T."""
    params = {name: p.clone().requires_grad_() for name, p in objective.init_params(0).items()}
    optimiser = torch.optim.SGD(params.values(), lr=lr, momentum=momentum)
    first_nan = None
    for t in range(objective.steps):
        optimiser.zero_grad()
        loss = objective.train_loss(params, None)
        if first_nan is None and not torch.isfinite(loss):
            first_nan = t
        loss.backward()
        optimiser.step()
    return first_nan, {name: p.detach() for name, p in params.items()}


def is_failed_or_exploded(trial, bound: float) -> bool:
    """A meta-gradient step whose run failed or diverged, or whose ∂ℓ/∂(η, β) is not finite, or
    whose sensitivities grew more than ``bound``."""
    gradient = trial.chain.gradient
    return (trial.status != TrialStatus.COMPLETED or gradient is None
            or not all(math.isfinite(x) for x in (*gradient.dlr, *gradient.dmomentum))
            or not gradient.amplification <= bound)


def check_back_off(trials, bound: float = MAX_AMPLIFICATION) -> list:
    """Every metagrad meta-gradient step that failed or exploded is rejected, and the next step
    of its chain is half as long: from the chain's last accepted point a, u_next − u_a =
    ½ (u_bad − u_a) in u = (log η, log(1 − β)); at a chain's start (nothing accepted yet),
    η halved and β kept. Returns those steps."""
    steps = [t for t in trials if t.chain is not None and t.chain.line is None]
    bad = [t for t in steps if is_failed_or_exploded(t, bound)]
    for trial in bad:
        assert not trial.chain.accepted, trial
        chain = [t for t in steps if t.chain.start == trial.chain.start]
        following = next((t for t in chain if t.number > trial.number), None)
        if following is None:
            continue
        accepted = [t for t in chain if t.number < trial.number and t.chain.accepted]
        if not accepted:
            assert following.lr == pytest.approx(trial.lr / 2, rel=1e-12)
            assert following.momentum == pytest.approx(trial.momentum, rel=1e-12)
        else:
            base = accepted[-1].point.to_u()
            assert following.point.to_u() - base == pytest.approx(0.5 * (trial.point.to_u() - base), abs=1e-9)
    return bad


@pytest.mark.parametrize("validation", ["plain", "capped"])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_that_turn_nan_mid_run_are_recorded_diverged_and_the_best_trains(method, validation):
    objective = deconvolution(validation)
    result = tune(objective, method, budget=(DECONVOLUTION_STEPS + 1) * 30, seed=0,
                  **({"max_amplification": MAX_AMPLIFICATION} if method == "metagrad" else {}))
    ends = (float(SPECTRUM[0]) + ENTROPY, float(SPECTRUM[-1]) + ENTROPY)  # the Hessian at p₀, exactly
    nan_steps = []
    for trial in result.trials:  # each run again by torch.optim.SGD
        first_nan, final = sgd(objective, trial.lr, trial.momentum)
        assert trial.lambda_max == pytest.approx(ends[1], rel=1e-3)
        assert trial.spectral_radius == pytest.approx(max(heavy_ball_radius(trial.lr, trial.momentum, lam)
                                                          for lam in ends), rel=1e-3)
        if torch.isfinite(final["p"]).all():
            assert trial.status == TrialStatus.COMPLETED, trial
            assert trial.value == pytest.approx(float(objective.val_loss(final)), rel=1e-6)
        else:  # NaN from step first_nan on: a result of the run, not a crash of the evaluation
            assert trial.status == TrialStatus.DIVERGED and trial.diverged and trial.error is None, trial
            assert trial.value == math.inf
            nan_steps.append((first_nan, trial.spectral_radius))
    assert nan_steps and all(0 < step < DECONVOLUTION_STEPS for step, _ in nan_steps)
    assert any(rho < 1 for _, rho in nan_steps)  # the NaN lies where ρ at p₀ says stable: no guard sees it
    if method == "metagrad":
        assert any(t.status == TrialStatus.DIVERGED for t in check_back_off(result.trials))
    best = result.best
    assert best is not None and best.status == TrialStatus.COMPLETED and math.isfinite(best.value)
    assert best.value < 1e-2 * float(objective.val_loss(objective.init_params(0)))


# -- meta-gradients that explode while the loss stays finite ---------------------------------

CONCENTRATION = np.logspace(0.0, 2.0, 8)  # κᵢ from 1 to 100
MEAN = np.linspace(-3.0, 3.0, 8)
SIGNS = np.array([(-1.0) ** i for i in range(8)])


def von_mises(offset: float, steps: int) -> Objective:
    """Circular regression: the von Mises negative log-likelihood ℓ(θ) = Σᵢ κᵢ (1 − cos(θᵢ − μᵢ))
    of eight angles, started ``offset`` radians from their means (alternating sides).

    ℓ lies in [0, 2 Σ κ] whatever the run does: no step overflows it. Its curvature κᵢ cos(θᵢ − μᵢ)
    is κᵢ cos(offset) at θ₀ (λ_max = 100 cos(offset) exactly), less than the κᵢ at the minimum, so
    an η that θ₀'s quadratic model calls stable can be past 2(1 + β)/κᵢ there: the iterates
    then wander chaotically between the wells, and the sensitivities ∂θₜ/∂(η, β) grow like
    e^{γt} (γ > 0, the Lyapunov exponent) until they overflow float64."""
    concentration, mean = torch.from_numpy(CONCENTRATION), torch.from_numpy(MEAN)

    def loss(params, batch=None):
        return (concentration * (1.0 - torch.cos(params["x"] - mean))).sum()

    def init_params(seed: int) -> dict:
        return {"x": torch.from_numpy(MEAN + offset * SIGNS)}

    return Objective("von-mises", "von Mises angles", init_params, loss, loss, lambda seed, steps: None,
                     SearchSpace(lr_low=1e-3, lr_high=10.0, momentum_high=0.99), steps=steps)


def numpy_meta_gradient(
    x0: np.ndarray, lr: float, momentum: float, steps: int,
) -> tuple[float, np.ndarray, float]:
    """ℓ(θ_T), ∂ℓ(θ_T)/∂(η, β) and the largest sensitivity |∂(θ_T, v_T)/∂(η, β)| of heavy ball on
    the von Mises loss, by forward-mode tangents written out in numpy (independent of torch.func):
    v' = βv + g, θ' = θ − ηv', so dv' = β dv + H dθ (+ v for β) and dθ' = dθ − η dv' (− v' for η),
    with g = κ sin(θ − μ), H = diag(κ cos(θ − μ))."""
    with np.errstate(over="ignore", invalid="ignore"):
        x, v = x0.copy(), np.zeros_like(x0)
        dx, dv = np.zeros((2, len(x0))), np.zeros((2, len(x0)))  # rows: ∂/∂η, ∂/∂β
        for _ in range(steps):
            g, h = CONCENTRATION * np.sin(x - MEAN), CONCENTRATION * np.cos(x - MEAN)
            v_next = momentum * v + g
            dv = np.stack([momentum * dv[0] + h * dx[0], v + momentum * dv[1] + h * dx[1]])
            x = x - lr * v_next
            dx = np.stack([dx[0] - v_next - lr * dv[0], dx[1] - lr * dv[1]])
            v = v_next
        value = float(np.sum(CONCENTRATION * (1.0 - np.cos(x - MEAN))))
        return value, dx @ (CONCENTRATION * np.sin(x - MEAN)), float(np.max(np.abs(np.concatenate([dx, dv]))))


SCENARIOS = {  # (offset, T, budget, metagrad options)
    # no screen: the chain starts at the optimum of θ₀'s quadratic model, whose curvature is
    # cos(1.45) ≈ 1/8 of the minimum's: in the chaos; it then reaches ℓ = 0 and ends there
    "start-in-chaos": (1.45, 300, 10_000, {"screen": 0}),
    # screened starts: the chain's BFGS steps run past the minimum's critical lr
    "step-into-chaos": (1.2, 100, 6_000, {}),
}


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_metagrad_backs_off_meta_gradients_that_explode_while_the_loss_stays_finite(scenario, mode):
    offset, steps, budget, options = SCENARIOS[scenario]
    objective = von_mises(offset, steps)
    result = tune(objective, "metagrad", budget=budget, seed=0, mode=mode,
                  max_amplification=MAX_AMPLIFICATION, **options)
    x0, ceiling = objective.init_params(0)["x"].numpy(), 2.0 * CONCENTRATION.sum()
    curvature = (CONCENTRATION[0] * math.cos(offset), CONCENTRATION[-1] * math.cos(offset))
    for trial in result.trials:  # the loss never explodes: every run completes, bounded
        assert trial.status == TrialStatus.COMPLETED and 0.0 <= trial.value <= ceiling, trial
        assert trial.lambda_max == pytest.approx(curvature[1], rel=1e-3)
    exploded = check_back_off(result.trials)
    assert exploded, "no meta-gradient exploded: the scenario no longer reaches the chaotic region"
    for trial in exploded:  # only the meta-gradient explodes: ρ at θ₀ called each of them stable,
        assert trial.spectral_radius == pytest.approx(max(heavy_ball_radius(trial.lr, trial.momentum, lam)
                                                          for lam in curvature), rel=1e-3)
        assert trial.spectral_radius < 1  # and numpy's own tangents grew past the bound (or overflowed)
        assert not numpy_meta_gradient(x0, trial.lr, trial.momentum, steps)[2] <= MAX_AMPLIFICATION
    accepted = [t for t in result.trials if t.chain is not None and t.chain.accepted]
    assert accepted
    for trial in accepted:  # the meta-gradients the chains moved on are the exact ones
        value, gradient, sensitivity = numpy_meta_gradient(x0, trial.lr, trial.momentum, steps)
        assert sensitivity <= MAX_AMPLIFICATION
        assert trial.value == pytest.approx(value, rel=1e-9, abs=1e-12)
        scale = 1e-9 * (1.0 + np.abs(gradient).max())
        assert trial.chain.gradient.dlr[0] == pytest.approx(gradient[0], rel=1e-6, abs=scale)
        assert trial.chain.gradient.dmomentum[0] == pytest.approx(gradient[1], rel=1e-6, abs=scale)
    if scenario == "start-in-chaos":  # the overflow itself: a NaN meta-gradient of a finite loss
        assert not math.isfinite(exploded[0].chain.gradient.dlr[0]) and math.isfinite(exploded[0].value)
    best = result.best
    assert best is not None and best.status == TrialStatus.COMPLETED and math.isfinite(best.value)
    assert best.value < 1e-6 * float(objective.val_loss(objective.init_params(0)))


def test_a_loss_that_rounds_to_zero_ends_its_chain_instead_of_dividing_its_slope_by_the_floor():
    """κ(1 − cos r) is 0 in float64 for |r| < 1e-8 while its slope is not: the run reports ℓ = 0
    with a meta-gradient of rounding size. ℓ = 0 is the least a loss ≥ 0 takes, so the chain
    accepts the point and stops there (∇ log ℓ = 0), rather than divide 1e-13 by the floor 1e-300
    of log ℓ and step to a corner of the space."""
    chains = MetagradChains(SearchSpace(), [Point.scalar(0.01, 0.5)])
    assert chains.tell(chains.ask(), 1.0, MetaGradient((-10.0,), (0.0,), amplification=1.0))
    assert chains.tell(chains.ask(), 0.0, MetaGradient((1e-13,), (-1e-13,), amplification=1.0))
    assert chains.ask() is None and chains.finished()


@pytest.mark.parametrize("value, moves", [(0.0, False), (1e-200, True)], ids=["rounds-to-zero", "tiny"])
def test_online_keeps_its_hyperparameters_where_the_loss_rounds_to_zero(monkeypatch, value, moves):
    """Each stretch of an ``online`` run reports ℓ = 0 with a meta-gradient of rounding size
    (1e-160): ∇ log ℓ is 0 there, so the run ends at the (η, β) it started from, rather than
    step on the rounding divided by the floor 1e-300 of log ℓ. The same meta-gradient of a
    loss of 1e-200, above the floor, moves it (the check can fail)."""
    import dataclasses

    from metatune.tuners import online

    def rounded(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), value=value, lr=1e-160, momentum=-1e-160)

    real = online.hypergrad
    monkeypatch.setattr(online, "hypergrad", rounded)
    trial = tune("quadratic", "online", budget=1_000, seed=0, horizon=25).trials[0]
    start = (trial.metrics["start_lr"], trial.metrics["start_momentum"])
    assert ((trial.lr, trial.momentum) != pytest.approx(start, rel=1e-12)) is moves
    assert trial.value == value
