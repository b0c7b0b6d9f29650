"""One shared suite over every tuning method, then what only metagrad promises."""

from __future__ import annotations

import math

import pytest

import metatune as mt
from metatune import objectives
from metatune.stability import critical_lr
from metatune.tuners import METHODS, tune
from metatune.tuners.metagrad import MetagradTuner

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
def test_trials_stay_in_the_space_and_best_is_the_minimum(results, method, quadratic):
    result, _ = results[method]
    space = quadratic.space
    for trial in result.trials:
        assert space.lr_low * (1 - 1e-9) <= trial.lr <= space.lr_high * (1 + 1e-9)
        assert space.momentum_low <= trial.momentum <= space.momentum_high
    finite = [t.value for t in result.trials if not t.diverged]
    assert result.best_value == min(finite)
    assert result.best_value < result.trials[0].value or result.best is result.trials[0]


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
    assert all(t.spectral_radius < 1 for t in result.trials if t.lr < 0.5 * critical_lr(100.0, t.momentum))


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
    result, _ = results["metagrad"]
    lam = quadratic.optimum["lambda_max"]
    assert all(t.lr <= critical_lr(lam, t.momentum) for t in result.trials)
    assert all(t.stable for t in result.trials)


def test_metagrad_coordinates_round_trip_and_projection_caps_lr(quadratic):
    tuner = MetagradTuner(quadratic, budget=BUDGET)
    u = MetagradTuner.encode(0.01, 0.7)
    assert MetagradTuner.decode(u) == pytest.approx((0.01, 0.7))
    lr, momentum = MetagradTuner.decode(tuner.project(MetagradTuner.encode(5.0, 0.5)))
    assert lr == pytest.approx((1 - tuner.margin) * critical_lr(100.0, momentum))


def test_metagrad_improves_on_the_rate_optimal_start(quadratic):
    result = tune(quadratic, "metagrad", budget=4_000, seed=0, screen=0)
    first = result.trials[0]
    assert "growth_rate" in first.metrics  # a meta-gradient step, not a screening trial
    horizon_limited = 100.0 / (quadratic.steps / 5.0) ** 2  # T = 30 steps resolve κ ≤ 36, not 100
    start_lr, start_momentum = mt.stability.optimal_hyperparameters(max(1.0, horizon_limited), 100.0)
    assert (first.lr, first.momentum) == pytest.approx((start_lr, start_momentum), rel=1e-3)
    assert result.best_value < 0.1 * first.value


@pytest.mark.parametrize("outer", ["bfgs", "adam"])
def test_metagrad_backs_off_after_a_bad_step(quadratic, outer):
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


def test_online_trial_is_the_adaptive_run_it_reports(quadratic):
    """The run moved (η, β) away from its start and ended lower than a run that kept the start."""
    result = tune(quadratic, "online", budget=1_000, seed=0, horizon=10)
    trial = result.trials[0]
    assert trial.metrics["horizon"] == 10
    assert (trial.lr, trial.momentum) != (trial.metrics["start_lr"], trial.metrics["start_momentum"])
    fixed = mt.unroll(quadratic.train_loss, quadratic.init_params(0), trial.metrics["start_lr"],
                      trial.metrics["start_momentum"], quadratic.steps)
    assert trial.value < float(quadratic.val_loss(fixed.params))  # adapting beat keeping the start


def test_metagrad_charges_its_objectives_measured_multiples(quadratic):
    from metatune.costs import measure

    result = tune(quadratic, "metagrad", budget=3_000, seed=0, screen=0, mode="reverse")
    costs = measure(quadratic.train_loss, quadratic.init_params(0))
    steps = [t for t in result.trials if "growth_rate" in t.metrics]
    assert steps and all(t.gradient_evals == costs.hypergrad("reverse", quadratic.steps) for t in steps)
    assert costs.backward_step < 2.0  # a quadratic's backward step is a matvec, cheaper than the default


def test_metagrad_retries_an_exploding_start_at_half_the_learning_rate(quadratic):
    from metatune.tuners.chains import MetagradChains

    chains = MetagradChains(quadratic.space, [(0.01, 0.5)])
    first = chains.ask()
    chains.tell(first, value=math.inf, dvalue_dlr=math.nan, dvalue_dmomentum=math.nan, diverged=True)
    retry = chains.ask()
    assert chains.starts[0].grad is None and chains.starts[0].inverse_hessian is None
    assert (retry.lr, retry.momentum) == pytest.approx((0.005, 0.5), rel=1e-12)


def test_metagrad_without_the_guard_may_go_past_the_critical_lr(quadratic):
    guarded, free = MetagradTuner(quadratic, budget=BUDGET), MetagradTuner(quadratic, budget=BUDGET, guard=False)
    far = MetagradTuner.encode(0.5, 0.5)
    assert MetagradTuner.decode(guarded.project(far))[0] < critical_lr(100.0, 0.5)
    assert MetagradTuner.decode(free.project(far))[0] == pytest.approx(min(0.5, quadratic.space.lr_high))


def test_metagrad_trials_say_which_start_they_belong_to(results):
    steps = [t for t in results["metagrad"][0].trials if "growth_rate" in t.metrics]
    starts = [t.metrics["start"] for t in steps]
    assert set(starts) <= {0, 1} and starts[0] == 0
    assert starts[: 2 * (len(starts) // 2)] == [0, 1] * (len(starts) // 2) or set(starts) == {0}


@pytest.mark.parametrize("method", ["tpe", "metagrad", "random", "grid", "cmaes"])
def test_a_resumed_search_goes_on_as_the_uninterrupted_one_did(quadratic, method):
    """Replaying the first trials of a run (as a resumed service job does) rebuilds the
    method's state: the rest of the run is the same, and no recorded trial is run again."""
    whole = tune(quadratic, method, budget=BUDGET, seed=0)
    cut = len(whole.trials) // 2
    seen = []
    resumed = METHODS[method](quadratic, budget=BUDGET, seed=0, callback=seen.append).run(history=whole.trials[:cut])
    assert [(t.lr, t.momentum) for t in resumed.trials] == [(t.lr, t.momentum) for t in whole.trials]
    # a population cut short is trained again without its recorded part: the batch differs, values agree to rounding
    assert [t.value for t in resumed.trials] == pytest.approx([t.value for t in whole.trials], rel=1e-9)
    assert [t.number for t in seen] == list(range(cut, len(whole.trials)))  # only the new trials were run
    assert resumed.gradient_evals == whole.gradient_evals
