"""One shared suite over every tuning method, then what only metagrad promises."""

from __future__ import annotations

import math

import numpy as np
import pytest

import metatune as mt
from metatune import objectives
from metatune.tuners import METHODS
from metatune.tuning import tune
from metatune.point import MetaGradient, Point
from metatune.tuners.base import Curvature, Trial, TuneResult
from metatune.objectives import SearchSpace
from metatune.tuners.metagrad import CATAPULT, MetagradTuner

BUDGET = 1_500


@pytest.fixture(scope="module")
def quadratic():
    return objectives.get("quadratic", dim=10, kappa=100.0, steps=30)


@pytest.fixture(scope="module")
def results(quadratic):
    """Every method once on the same objective, budget and seed, with its callback log."""
    out = {}
    for method in METHODS:
        seen = []
        out[method] = (tune(quadratic, method, budget=BUDGET, seed=0, callback=seen.append), seen)
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_budget_is_respected_and_counted(results, method):
    result, _ = results[method]
    assert 0 < result.gradient_evals <= BUDGET
    cumulative = [t.cumulative_evals for t in result.trials]
    assert cumulative == sorted(cumulative)
    assert sum(t.gradient_evals for t in result.trials) <= cumulative[-1] + 1e-9


@pytest.mark.parametrize("method", sorted(METHODS))
def test_callback_sees_every_trial_in_order(results, method):
    result, seen = results[method]
    assert seen == result.trials and [t.number for t in seen] == list(range(len(seen)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trials_stay_in_the_space_and_the_best_trains(results, method, quadratic):
    result, _ = results[method]
    space = quadratic.space
    for trial in result.trials:
        assert space.lr_low * (1 - 1e-9) <= trial.lr <= space.lr_high * (1 + 1e-9)
        assert space.momentum_low <= trial.momentum <= space.momentum_high
    untrained = float(quadratic.val_loss(quadratic.init_params(0)))
    assert result.best_value < 1e-2 * untrained  # every method trains: ℓ_val(θ₀) ≈ 1e2 on this quadratic


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"online"}))  # online trials adapt (η, β) mid-run
def test_trial_values_are_the_validation_loss_of_a_plain_run(results, method, quadratic):
    result, _ = results[method]
    trial = result.best
    params = quadratic.init_params(0)
    run = mt.unroll(quadratic.train_loss, params, trial.lr, trial.momentum, quadratic.steps)
    assert trial.value == pytest.approx(float(quadratic.val_loss(run.params)), rel=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_same_trials(results, method, quadratic):
    again = tune(quadratic, method, budget=BUDGET, seed=0)
    first, _ = results[method]
    assert [(t.lr, t.momentum) for t in again.trials] == [(t.lr, t.momentum) for t in first.trials]


@pytest.mark.parametrize("method", ["tpe", "random", "cmaes"])
def test_diverged_trials_are_recorded_with_their_spectral_radius(method):
    """Most of this space lies past the critical lr: trials diverge, the study goes on."""
    wide = objectives.get("quadratic", dim=10, kappa=100.0, steps=60)
    result = tune(wide, method, budget=61 * 30, seed=1,
                  space=objectives.SearchSpace(lr_low=1e-3, lr_high=1.0))
    diverged = [t for t in result.trials if t.diverged]
    assert diverged and len(result.trials) == 30
    assert all(t.value == math.inf and t.spectral_radius > 1 and not t.stable for t in diverged)
    half_critical = [t for t in result.trials if t.lr < 0.5 * 2 * (1 + t.momentum) / 100.0]  # λ_max = κ = 100
    assert all(t.spectral_radius < 1 for t in half_critical)


def test_unknown_method_and_bad_budget_are_refused(quadratic):
    with pytest.raises(ValueError, match="method='sideways'"):
        tune(quadratic, "sideways", budget=100)
    with pytest.raises(ValueError, match="budget=-5"):
        tune(quadratic, "tpe", budget=-5)
    with pytest.raises(ValueError, match="objective='nope'"):
        tune("nope", "tpe", budget=100)
    with pytest.raises(ValueError, match="budget=10 is invalid: expected at least one training run: 31"):
        tune(quadratic, "random", budget=10)


def test_metagrad_respects_the_stability_guard(results, quadratic):
    """Every trial, screening included, lies under 2(1 + β)/λ_max for the λ_max it records,
    and that λ_max is the quadratic's (κ = 100, the largest eigenvalue by construction):
    Lanczos finds θ₀ convex, so the chains keep the same cap."""
    result, _ = results["metagrad"]
    assert all(t.lambda_max == pytest.approx(100.0, rel=1e-3) for t in result.trials)
    assert all(t.lr < 2 * (1 + t.momentum) / t.lambda_max for t in result.trials)


def _told(lambda_max: float, evals: float = 0.0) -> Curvature:
    """λ_max at θ₀ (λ_min unknown), as a tuner is told it instead of estimating it."""
    return Curvature(math.nan, lambda_max, evals)


def encode(lr: float, momentum: float) -> np.ndarray:
    return Point.scalar(lr, momentum).to_u()


def decode(u: np.ndarray) -> tuple[float, float]:
    point = Point.from_u(u)
    return point.lrs[0], point.momenta[0]


def _gradient(dlr: float, dmomentum: float) -> MetaGradient:
    return MetaGradient((dlr,), (dmomentum,), amplification=1.0)


def test_metagrad_coordinates_round_trip():
    u = encode(0.01, 0.7)
    assert u.tolist() == pytest.approx([math.log(0.01), math.log(0.3)], rel=1e-15)
    assert decode(u) == pytest.approx((0.01, 0.7), rel=1e-15)


@pytest.mark.parametrize("momentum, cap", [(0.0, 0.0396), (0.5, 0.0594), (0.9, 0.07524)])
def test_metagrad_caps_lr_at_the_margin_under_the_critical_lr(quadratic, momentum, cap):
    """λ_max = 50, margin 1 %: cap = 0.99 · 2(1 + β)/50, so 0.0396, 0.0594, 0.07524 (all under
    the space's 0.1). Oracle for the boundary: numpy eigenvalues of the 2×2 transition."""
    tuner = MetagradTuner(quadratic, budget=BUDGET, margin=0.01, guard=True, curvature=_told(50.0))
    assert tuner.lr_cap(momentum) == pytest.approx(cap, rel=1e-12)
    lr, projected = decode(tuner.project(encode(5.0, momentum)))
    assert (lr, projected) == pytest.approx((cap, momentum), rel=1e-12)
    assert transition_radius(cap, momentum, 50.0) < 1 < transition_radius(cap / 0.99 * 1.001, momentum, 50.0)


def transition_radius(lr: float, momentum: float, lam: float) -> float:
    """Largest |eigenvalue| of (θ, v) → (θ − η(βv + λθ), βv + λθ) (heavy ball, one eigenvalue)."""
    matrix = np.array([[1 - lr * lam, -lr * momentum], [lam, momentum]])
    return float(np.abs(np.linalg.eigvals(matrix)).max())


def test_metagrad_without_the_guard_may_go_past_the_critical_lr(quadratic):
    """λ_max = 100, β = 0.5: the critical lr is 2 · 1.5/100 = 0.03; unguarded, only the space's 0.1 binds."""
    guarded = MetagradTuner(quadratic, budget=BUDGET, guard=True, curvature=_told(100.0))
    free = MetagradTuner(quadratic, budget=BUDGET, guard=False, curvature=_told(100.0))
    far = encode(0.5, 0.5)
    capped = 0.03 * (1 - guarded.margin)
    assert decode(guarded.project(far))[0] == pytest.approx(capped, rel=1e-12)
    assert decode(free.project(far))[0] == pytest.approx(0.1, rel=1e-12)


def test_chains_may_step_to_twice_the_critical_lr_where_theta0_is_not_convex(quadratic):
    """λ_max = 100, β = 0.5: the critical lr is 0.03; the theory start and screening are capped
    at 0.03 · (1 − margin). With λ_min unknown (not convex) a chain may go to CATAPULT = 2
    times that, 0.06 (under the space's 0.1); with λ_min = 1 found, to the same 0.03."""
    tuner = MetagradTuner(quadratic, budget=BUDGET, guard=True, curvature=_told(100.0))
    capped = 0.03 * (1 - tuner.margin)
    assert CATAPULT == 2.0 and tuner.chain_cap(0.5) == pytest.approx(2 * capped, rel=1e-12)
    chains = tuner.make_chains([Point.scalar(0.02, 0.5)])
    assert decode(chains.project(encode(0.5, 0.5)))[0] == pytest.approx(2 * capped, rel=1e-12)
    assert all(lr <= tuner.lr_cap(m) * (1 + 1e-12) for lr, m in (p.pairs()[0] for p in tuner.screen_points(8)))
    convex = MetagradTuner(quadratic, budget=BUDGET, guard=True, curvature=Curvature(1.0, 100.0, 0.0))
    assert convex.chain_cap(0.5) == pytest.approx(capped, rel=1e-12)


def test_automatic_guard_holds_where_theta0_is_convex_and_lifts_where_it_is_not(quadratic):
    """guard="auto": λ_min = 1 > 0 found at θ₀ → capped at 2(1 + β)/100 · (1 − margin);
    λ_min not positive (NaN) → only the space's 0.1 binds."""
    convex = MetagradTuner(quadratic, budget=BUDGET, guard="auto", curvature=Curvature(1.0, 100.0, 0.0))
    saddle = MetagradTuner(quadratic, budget=BUDGET, guard="auto", curvature=_told(100.0))
    assert convex.lr_cap(0.5) == pytest.approx(0.03 * (1 - convex.margin), rel=1e-12)
    assert saddle.lr_cap(0.5) == pytest.approx(0.1, rel=1e-12)


def test_metagrad_starts_at_the_rate_optimum_the_horizon_can_resolve(quadratic):
    """λ_max = 100, λ_min unknown (negative curvature), T = 20: κ_T = (20/5)² = 16 is below the
    assumed 30, so the start is heavy ball's optimum on [100/16, 100]: √κ = 4, β* = (3/5)² = 9/25
    and η* = 4/(10 + 10/4)² = 4/156.25. The curvature estimate (here told to cost 7) is charged first."""
    tuner = MetagradTuner(quadratic, budget=2_000, seed=0, screen=0, steps=20, curvature=_told(100.0, evals=7.0))
    result = tuner.run()
    first = result.trials[0]
    assert "growth_rate" in first.metrics  # a meta-gradient step, not a screening trial
    assert (first.point.lr, first.point.momentum) == pytest.approx((4 / 156.25, 9 / 25), rel=1e-12)
    assert first.cumulative_evals == pytest.approx(7.0 + first.gradient_evals, rel=1e-12)
    assert result.best_value < 0.1 * first.value


def test_metagrad_assumes_condition_30_where_theta0_has_negative_curvature(quadratic):
    """λ_max = 100, λ_min unknown, T = 300 (κ_T = 3600 resolvable): the start is heavy ball's
    optimum on [100/30, 100], β* = ((√30 − 1)/(√30 + 1))², η* = 4/(10 + 10/√30)², and not that
    of κ = 100 (β* = 81/121) nor of κ_T."""
    tuner = MetagradTuner(quadratic, budget=BUDGET, steps=300, curvature=_told(100.0))
    root = math.sqrt(30.0)
    expected = (4 / (10 + 10 / root) ** 2, ((root - 1) / (root + 1)) ** 2)
    assert decode(tuner.theory_point()) == pytest.approx(expected, rel=1e-12)


def test_metagrad_starts_mid_space_without_positive_curvature(quadratic):
    """λ_max ≤ 0: the geometric middle of η ∈ [1e-5, 1e-1], i.e. 1e-3, at β = 0.5."""
    tuner = MetagradTuner(quadratic, budget=BUDGET, curvature=_told(-1.0))
    assert decode(tuner.theory_point()) == pytest.approx((1e-3, 0.5), rel=1e-12)


@pytest.fixture
def rate_optimal_start(monkeypatch):
    """metagrad (and online) start at the rate-optimal (η*, β*) of the estimated spectrum's ends,
    away from the finite-horizon optimum the model start finds on a resolved quadratic, so
    that the steps after it have something to do."""
    def start(self):
        curvature = self.curvature()
        lr, momentum = mt.stability.optimal_hyperparameters(curvature.lambda_min, curvature.lambda_max)
        return self.project(encode(lr, momentum))

    monkeypatch.setattr(MetagradTuner, "theory_point", start)


@pytest.mark.parametrize("outer", ["bfgs", "adam"])
def test_metagrad_backs_off_after_a_bad_step(quadratic, outer, rate_optimal_start):
    """A huge first step overshoots; the tuner returns to its accepted point with half the step,
    so every proposal after a rejection is closer to the accepted point than the one before."""
    result = tune(quadratic, "metagrad", budget=4_000, seed=0, meta_lr=3.0, starts=1, screen=0, outer=outer)
    steps = [t for t in result.trials if "growth_rate" in t.metrics]
    assert steps[1].value > steps[0].value  # the overshoot
    accepted = steps[0]
    distances = []
    for trial in steps[1:]:
        distances.append(abs(math.log(trial.lr / accepted.lr)) + abs(math.log((1 - trial.momentum) / (1 - accepted.momentum))))
        if trial.value < accepted.value:
            break
    assert all(b < a for a, b in zip(distances, distances[1:]))
    assert result.best_value < steps[0].value


def test_online_trial_is_the_adaptive_run_it_reports(quadratic, rate_optimal_start):
    """The run moved (η, β) away from its start and ended lower than a run that kept the start."""
    result = tune(quadratic, "online", budget=1_000, seed=0, horizon=10)
    trial = result.trials[0]
    assert trial.metrics["horizon"] == 10
    assert (trial.lr, trial.momentum) != (trial.metrics["start_lr"], trial.metrics["start_momentum"])
    fixed = mt.unroll(quadratic.train_loss, quadratic.init_params(0), trial.metrics["start_lr"],
                      trial.metrics["start_momentum"], quadratic.steps)
    assert trial.value < float(quadratic.val_loss(fixed.params))  # adapting beat keeping the start


@pytest.mark.parametrize("mode, charge", [("reverse", 31 + 30 * 20 / 21), ("forward", 1 + 30 * 61 / 21)],
                         ids=["reverse", "forward"])
def test_metagrad_charges_its_objectives_measured_multiples(quadratic, mode, charge):
    """ℓ = ½ dᵀ(A d), n = 10, T = 30, counted by hand (tests/test_costs.py): a gradient costs
    4n² + 2n = 420 FLOPs, a backward step 4n² = 400 (20/21 of a gradient), a step carrying
    two tangents, the gradient and a backward pass through it per tangent, 420 + 2 · 400 =
    1220 (61/21). Reverse: 30 + 30 · 20/21 + 1; forward: 30 · 61/21 + 1. A fixed-(η, β) trial
    costs 30 + 1."""
    result = tune(quadratic, "metagrad", budget=BUDGET, seed=0, mode=mode)
    steps = [t for t in result.trials if "growth_rate" in t.metrics]
    assert steps and all(t.gradient_evals == pytest.approx(charge, rel=1e-12) for t in steps)
    assert all(t.gradient_evals == 31 for t in result.trials if t not in steps)


def test_metagrad_retries_an_exploding_start_at_half_the_learning_rate(quadratic):
    from metatune.tuners.chains import MetagradChains

    chains = MetagradChains(quadratic.space, [Point.scalar(0.01, 0.5)])
    first = chains.ask()
    chains.tell(first, value=math.inf, diverged=True)
    retry = chains.ask()
    assert chains.starts[0].grad is None and chains.starts[0].inverse_hessian is None
    assert (retry.point.lr, retry.point.momentum) == pytest.approx((0.005, 0.5), rel=1e-12)


def test_the_first_chain_starts_at_the_best_screened_point(results):
    """starts=2 (the default) with screening: the theory point and 8 Sobol points come first;
    the first meta-gradient is taken at the lowest of them, and a step of the second chain,
    if any, begins at the second lowest."""
    trials = results["metagrad"][0].trials
    screening, steps = trials[:9], [t for t in trials if "growth_rate" in t.metrics]
    assert all("growth_rate" not in t.metrics for t in screening) and trials[9] == steps[0] and len(steps) >= 3
    ranked = sorted(screening, key=lambda t: t.value)
    for start in (0, 1):
        first = next((t for t in steps if t.chain.start == start), None)
        if start == 0 or first is not None:
            assert (first.point.lr, first.point.momentum, first.value) == pytest.approx(
                (ranked[start].lr, ranked[start].momentum, ranked[start].value), rel=1e-12)


def test_a_worse_start_is_measured_only_once_the_better_chain_stalls():
    """Two starts screened at ℓ = 1 and 2: the first meta-gradient only measures where a chain
    stands, so the start at 2 waits while the chain from 1 descends (accepts 0.9), and is
    measured once that chain's last STALL = 4 proposals were all rejected."""
    from metatune.tuners.chains import STALL, MetagradChains

    space = SearchSpace(lr_low=1e-4, lr_high=1.0)
    chains = MetagradChains(space, [Point.scalar(0.01, 0.5), Point.scalar(0.02, 0.5)], values=[1.0, 2.0])
    first = chains.ask()
    assert first.start == 0 and (first.point.lr, first.point.momentum) == pytest.approx((0.01, 0.5), rel=1e-12)
    chains.tell(first, value=1.0, gradient=_gradient(-10.0, 0.0))
    step = chains.ask()
    assert step.start == 0 and step.point.lr > 0.01
    chains.tell(step, value=0.9, gradient=_gradient(-5.0, 0.0))  # accepted: 0.9 < 1
    assert STALL == 4
    for _ in range(STALL):
        step = chains.ask()
        assert step.start == 0
        chains.tell(step, value=0.95, gradient=_gradient(-1.0, 0.0))
    second = chains.ask()
    assert second.start == 1 and (second.point.lr, second.point.momentum) == pytest.approx((0.02, 0.5), rel=1e-12)


def _cubic(alpha: float) -> tuple[float, float]:
    """φ(α) = −α³/3 + 1.1α² − 0.4α and φ'(α) = −(α − 0.2)(α − 2): its minimiser on [0, 1] is 0.2."""
    return -alpha**3 / 3 + 1.1 * alpha**2 - 0.4 * alpha, -(alpha - 0.2) * (alpha - 2.0)


@pytest.mark.parametrize("phi, expected", [
    (_cubic, 0.2),  # an exact cubic: its minimiser
    (lambda a: ((a - 0.3) ** 2, 2 * (a - 0.3)), 0.3),  # a quadratic is a cubic too
    (lambda a: (1e3 * a * a - a, 2e3 * a - 1), 0.1),  # minimiser 5e-4: kept at 0.1
    (lambda a: (-0.1 * a + 0.2 * a * a, -0.1 + 0.4 * a), 0.25),  # minimiser 0.25, φ(1) > φ(0)
    (lambda a: (a, 1.0), 0.5),  # not a descent direction: halve
])
def test_backtrack_is_the_minimiser_of_the_matching_cubic_within_a_tenth_and_a_half(phi, expected):
    from metatune.tuners.chains import backtrack

    (value0, slope0), (value1, slope1) = phi(0.0), phi(1.0)
    assert backtrack(value0, slope0, value1, slope1) == pytest.approx(expected, rel=1e-9)


def test_a_rejected_step_is_retried_at_the_backtracked_fraction_of_the_same_path():
    """From (0.01, 0.5), accepted at ℓ = 1 with ∇ log ℓ = (−0.5, 0) (∂ℓ/∂η = −50): the first
    step is 1 along +log η (log 2/0.5 > 1). Told log ℓ = φ(1) there with slope φ'(1) along the
    path, φ(α) = −0.5α + (5/6)α² (minimiser 0.3), the next proposal is at α = 0.3 of it:
    η = 0.01 · e^0.3, and the chain counts one rejection."""
    from metatune.tuners.chains import MetagradChains

    chains = MetagradChains(SearchSpace(lr_low=1e-4, lr_high=1.0), [Point.scalar(0.01, 0.5)])
    first = chains.ask()
    chains.tell(first, value=1.0, gradient=_gradient(-50.0, 0.0))
    second = chains.ask()
    assert second.point.lr == pytest.approx(0.01 * math.e, rel=1e-12)
    value = math.exp(-0.5 + 5 / 6)
    slope = -0.5 + 5 / 3  # d log ℓ/d log η = η ∂ℓ/∂η / ℓ
    chains.tell(second, value=value, gradient=_gradient(slope * value / second.point.lr, 0.0))
    third = chains.ask()
    assert (third.point.lr, third.point.momentum) == pytest.approx((0.01 * math.exp(0.3), 0.5), rel=1e-9)
    assert chains.starts[0].rejections == 1


def test_metagrad_starts_a_resolved_quadratic_at_its_finite_horizon_optimum(quadratic):
    """dim 10 ≤ the Lanczos products: the model of ℓ_T is exact, so the start trains (by the
    population engine, an independent run) no worse than the best of a dense 48 × 48 grid under
    the guard, and far below the rate-optimal point's knife edge."""
    tuner = MetagradTuner(quadratic, budget=BUDGET, seed=0)
    lr, momentum = decode(tuner.theory_point())
    params, space = quadratic.init_params(0), quadratic.space
    lrs, momenta = np.meshgrid(np.geomspace(space.lr_low, space.lr_high, 48), np.linspace(0.0, 0.99, 48))
    keep = lrs <= np.vectorize(tuner.lr_cap)(momenta)
    grid = mt.train_population(quadratic.train_loss, quadratic.val_loss, params, lrs[keep].tolist(),
                               momenta[keep].tolist(), quadratic.steps).values.min()
    start = mt.train_population(quadratic.train_loss, quadratic.val_loss, params, [lr], [momentum],
                                quadratic.steps).values[0]
    curvature = tuner.curvature()
    rate_optimal = mt.train_population(quadratic.train_loss, quadratic.val_loss, params,
                                       *[[x] for x in mt.stability.optimal_hyperparameters(
                                           curvature.lambda_min, curvature.lambda_max)], quadratic.steps).values[0]
    assert float(start) <= float(grid)
    assert float(start) < 0.1 * float(rate_optimal)


@pytest.mark.parametrize("line, expected", [
    ([(1.0, -0.5)], 3.0),  # the farthest point is the best: the loss still falls, extrapolate
    ([(2.0, 1.0)], 2.0 / 3.0),  # t = 0 best: φ(α) = −2α + 3α² through φ(1) = 1 (minimiser 1/3), times 2
    ([(2.0, math.inf)], 1.0),  # the run diverged there: half
    ([(1.0, -0.5), (3.0, -0.2)], math.sqrt(3.0)),  # bracketed by t = 1 and 3: their geometric mean
    ([(1.0, -0.5), (3.0, -0.7), (9.0, -0.6)], math.sqrt(27.0)),
    ([(t, -t) for t in (1.0, 3.0, 9.0, 27.0, 81.0, 243.0)], None),  # LINE_POINTS spent
])
def test_the_value_only_line_search_extrapolates_backtracks_and_brackets(line, expected):
    from metatune.tuners.chains import next_fraction

    found = next_fraction(0.0, -1.0, line)
    assert found == expected if expected is None else found == pytest.approx(expected, rel=1e-12)


def test_line_search_points_follow_the_chains_step_direction_and_leave_it_where_it_is():
    """After a meta-gradient at (0.01, 0.5) with ∇ log ℓ = (−0.5, 0), the chain's full step is 1
    along +log η. Value-only points go to t = 1, then 3 (it fell), then √3 (3 was worse);
    the chain's accepted point and loss stay; a chain without a gradient offers none."""
    from metatune.tuners.chains import MetagradChains

    chains = MetagradChains(SearchSpace(lr_low=1e-4, lr_high=1.0), [Point.scalar(0.01, 0.5)])
    assert chains.ask(line=True) is None  # no gradient yet
    first = chains.ask()
    chains.tell(first, value=1.0, gradient=_gradient(-50.0, 0.0))
    u, value = chains.starts[0].u.copy(), chains.starts[0].value
    for told, t in [(0.5, 1.0), (0.7, 3.0), (0.6, math.sqrt(3.0))]:
        step = chains.ask(line=True)
        assert step.line == pytest.approx(t, rel=1e-12)
        assert (step.point.lr, step.point.momentum) == pytest.approx((0.01 * math.exp(t), 0.5), rel=1e-9)
        chains.tell(step, value=told)
    assert chains.starts[0].u.tolist() == u.tolist() and chains.starts[0].value == value


def test_metagrads_last_runs_are_value_only_points_on_one_line(quadratic, rate_optimal_start):
    """A budget that affords no meta-gradient whose gradient a later run could use is spent on
    T + 1-gradient runs (no meta-gradient metrics) along one line in u from the chain's point;
    the total stays within the budget."""
    tuner = MetagradTuner(quadratic, budget=2_000, seed=0, screen=0, starts=1)
    result = tuner.run()
    gradient_steps = [i for i, t in enumerate(result.trials) if "growth_rate" in t.metrics]
    tail = result.trials[gradient_steps[-1] + 1:]
    assert len(tail) >= 2 and result.gradient_evals <= 2_000 + 1e-9
    assert all(t.gradient_evals == quadratic.steps + 1 and "growth_rate" not in t.metrics for t in tail)
    origin = tuner.chains.starts[0].u
    moves = np.array([encode(t.lr, t.momentum) - origin for t in tail])
    unit = moves[0] / np.linalg.norm(moves[0])
    assert np.allclose(moves - np.outer(moves @ unit, unit), 0.0, atol=1e-9)
    assert tuner.remaining() < tuner.trial_cost() or tuner.chains.finished()


def test_a_line_search_value_is_not_taken_for_a_meta_gradient_and_serves_the_line_at_a_bound():
    """The outer step's full point told by a line search (its loss only) is still proposed for
    its meta-gradient. Where the line runs into a bound, every farther t projects onto the
    point already told: each is answered from memory, and the search ends after LINE_POINTS
    without proposing it again."""
    from metatune.tuners.chains import LINE_POINTS, MetagradChains

    chains = MetagradChains(SearchSpace(lr_low=1e-4, lr_high=1.0), [Point.scalar(0.01, 0.5)])
    chains.tell(chains.ask(), value=1.0, gradient=_gradient(-50.0, 0.0))
    line = chains.ask(line=True)
    chains.tell(line, value=0.5)
    step = chains.ask()
    assert step is not None and step.line is None and step.u == line.u

    bounded = MetagradChains(SearchSpace(lr_low=1e-4, lr_high=0.01 * math.exp(0.5)), [Point.scalar(0.01, 0.5)])
    bounded.tell(bounded.ask(), value=1.0, gradient=_gradient(-50.0, 0.0))
    line = bounded.ask(line=True)
    assert line.point.lr == pytest.approx(0.01 * math.exp(0.5), rel=1e-12)  # the step, clipped at the bound
    bounded.tell(line, value=0.5)
    assert bounded.ask(line=True) is None
    assert len(bounded.starts[0].line) == LINE_POINTS and bounded.starts[0].done


def test_a_chain_point_at_the_bound_is_the_bound_itself():
    """u = (log 3, log(1 − 0.99)) decodes to η = exp(log 3) = 3.0000000000000004 and
    β = 0.9899999999999999…; point_at clips into the space, so the best lr of a chain that
    ran into the bound is the space's high, not a rounding error past it."""
    import numpy as np

    from metatune.objectives import SearchSpace
    from metatune.point import Point
    from metatune.tuners.chains import point_at

    space = SearchSpace(lr_low=1e-3, lr_high=3.0, momentum_low=0.0, momentum_high=0.99)
    u = np.array([np.log(3.0), np.log(1.0 - 0.99)])
    assert Point.from_u(u).lrs[0] > space.lr_high
    point = point_at(u, space)
    assert point.lrs == (3.0,) and space.momentum_low <= point.momenta[0] <= space.momentum_high
    assert point_at(np.array([np.log(0.1), np.log(0.5)]), space).lrs[0] == pytest.approx(0.1, rel=1e-15)


# -- resuming an interrupted job -------------------------------------------------------------

SEEDED = sorted(set(METHODS) - {"online"})  # online keeps its history as it is: each run starts where the last ended
RESUME_BUDGET = 31 * 24


def run_with_trials_in_flight(tuner, width: int = 4) -> TuneResult:
    """The tuner driven as Ray drives it with ``width`` trials running: it is asked again
    while results are outstanding, and the newest proposal finishes first, so the first
    point asked is recorded last (the order that made a resumed sampler draw its first
    points again)."""
    from metatune.tuners.evaluation import evaluate

    tuner.start()
    flight, committed = [], 0.0
    while True:
        while len(flight) < width and (proposal := tuner.propose(tuner.remaining() - committed)) is not None:
            flight.append(proposal)
            committed += proposal.cost
        if not flight:
            return tuner.finish()
        proposal = flight.pop()
        committed -= proposal.cost
        tuner.conclude(proposal, evaluate(tuner.context, proposal))


def evaluation(trial: Trial) -> tuple[Point, bool]:
    """What a trial evaluated: its point, and whether it took the meta-gradient there (a
    metagrad chain's first meta-gradient is taken at a screened point)."""
    return trial.point, "growth_rate" in trial.metrics


@pytest.mark.parametrize("method", SEEDED)
def test_a_resumed_run_goes_on_with_the_sequence_the_uninterrupted_run_drew(quadratic, method):
    """Resumed after its first k trials (asked and told one at a time), a run proposes what
    the uninterrupted run proposed next: the replay restores the sampler's random state."""
    full = tune(quadratic, method, budget=RESUME_BUDGET, seed=0)
    k = len(full.trials) // 2
    resumed = tune(quadratic, method, budget=RESUME_BUDGET, seed=0, history=full.trials[:k])
    assert [t.point for t in resumed.trials] == [t.point for t in full.trials]
    assert [t.number for t in resumed.trials] == list(range(len(full.trials)))


@pytest.mark.parametrize("method", SEEDED)
def test_a_run_resumed_after_out_of_order_trials_never_repeats_a_recorded_point(quadratic, method):
    """The interrupted run had 4 trials in flight and recorded them newest first; resumed
    from its first 13 records, no evaluation is repeated, the numbers go on, and the
    budget is spent as by an uninterrupted run (as many trials for fixed-cost methods)."""
    interrupted = run_with_trials_in_flight(METHODS[method](quadratic, budget=RESUME_BUDGET, seed=0))
    history = interrupted.trials[:13]
    resumed = tune(quadratic, method, budget=RESUME_BUDGET, seed=0, history=history)
    recorded = {evaluation(t) for t in history}
    assert [t.point for t in resumed.trials[:13]] == [t.point for t in history]
    assert not [t.number for t in resumed.trials[13:] if evaluation(t) in recorded]
    assert [t.number for t in resumed.trials] == list(range(len(resumed.trials)))
    assert len({evaluation(t) for t in resumed.trials}) == len(resumed.trials)
    trial_cost = quadratic.steps + 1.0
    assert resumed.gradient_evals <= RESUME_BUDGET + 1e-9
    if method == "grid":
        assert len(resumed.trials) == math.isqrt(RESUME_BUDGET // 31) ** 2
    elif method == "metagrad":
        assert RESUME_BUDGET - resumed.gradient_evals < trial_cost  # the rest affords no run
    else:
        assert len(resumed.trials) == RESUME_BUDGET // trial_cost


def test_a_proposal_at_recorded_points_is_told_from_the_records_and_not_evaluated(quadratic):
    """propose() tells the method the recorded outcome of a point it asks again and returns
    only the unrecorded rest, which conclude() tells together with it."""
    tuner = METHODS["random"](quadratic, budget=31 * 4, seed=0)
    tuner.start()
    first = tuner.ask(tuner.remaining())
    from metatune.tuners.evaluation import evaluate

    outcomes = evaluate(tuner.context, first)
    recorded = [tuner.record_outcome(o, 31.0) for o in outcomes[:2]]  # two of four recorded, untold
    told = []
    tuner.tell = lambda proposal, outs: told.append((proposal, outs))  # noqa: ARG005 - what the method is told
    tuner.ask = lambda remaining: first  # the method asks the same four points again
    part = tuner.propose(tuner.remaining())
    assert part.points == first.points[2:] and part.cost == pytest.approx(first.cost / 2)
    assert told == []
    tuner.conclude(part, outcomes[2:])
    (proposal, outs), = told
    assert proposal is first and [o.point for o in outs] == [t.point for t in recorded] + list(first.points[2:])
    assert [o.value for o in outs[:2]] == [t.value for t in recorded]
    assert len(tuner.trials) == 4 and [t.number for t in tuner.trials] == [0, 1, 2, 3]
