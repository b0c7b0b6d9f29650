"""Per-group search spaces: an η and a β per parameter group, searched by every method that
takes them, with metagrad's per-group meta-gradients checked against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metatune.objectives import Objective, SearchSpace
from metatune.tuners import METHODS
from metatune.tuning import tune
from metatune.point import MetaGradient, Point
from metatune.tuners.chains import log_loss_gradient
from metatune.tuners.evaluation import Proposal, evaluate, evaluate_point
from metatune.tuners.groups import resolve_groups
from metatune.tuners.metagrad import MetagradTuner

STEPS, BUDGET = 20, 600
GROUPED = sorted(name for name, tuner in METHODS.items() if tuner.supports_groups)


def _tiny_objective() -> Objective:
    """A 4-6-3 tanh classifier in float64, minibatches of 16: three parameter groups by layer."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=generator, dtype=torch.float64), torch.randint(0, 3, (64,), generator=generator)
    x_val, y_val = x[:32] + 0.1, y[:32]

    def init_params(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        return {"hidden.weight": 0.5 * torch.randn(6, 4, generator=g, dtype=torch.float64),
                "hidden.bias": torch.zeros(6, dtype=torch.float64),
                "out.weight": 0.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)}

    def logits(p, inputs):
        return torch.tanh(inputs @ p["hidden.weight"].T + p["hidden.bias"]) @ p["out.weight"].T

    def train_loss(p, batch):
        return torch.nn.functional.cross_entropy(logits(p, x[batch]), y[batch])

    def val_loss(p):
        return torch.nn.functional.cross_entropy(logits(p, x_val), y_val)

    def batches(seed: int, steps: int) -> list:
        g = torch.Generator().manual_seed(seed + 1)
        return [torch.randperm(64, generator=g)[:16] for _ in range(steps)]

    return Objective("tiny", "tiny classifier", init_params, train_loss, val_loss, batches,
                     SearchSpace(lr_low=1e-3, lr_high=3.0), steps=STEPS)


@pytest.fixture(scope="module")
def tiny() -> Objective:
    return _tiny_objective()


def test_groups_resolve_by_layer_tensor_or_prefix(tiny):
    params = tiny.init_params(0)
    assert resolve_groups(None, params) == ()
    assert resolve_groups("layers", params) == ("hidden", "out")
    assert resolve_groups("tensors", params) == ("hidden.weight", "hidden.bias", "out.weight")
    assert resolve_groups(["hidden", "out.weight"], params) == ("hidden", "out.weight")
    for bad in ("rows", ["hidden"], ["hidden", "out", "missing"], ["hidden", "hidden", "out"], []):
        with pytest.raises(ValueError, match="groups"):
            resolve_groups(bad, params)


def test_per_group_meta_gradients_match_finite_differences(tiny):
    """∂ℓ_val/∂η_g and ∂ℓ_val/∂β_g as the tuner receives them (reverse mode, metrics by
    group) against central differences of trained runs, and the u-gradient the chains
    descend against differences of log ℓ_val in u = (log η_g, log(1 − β_g))."""
    tuner = MetagradTuner(tiny, budget=10_000, seed=0, groups="layers", mode="reverse")
    lr, momentum = {"hidden": 0.4, "out": 0.2}, {"hidden": 0.5, "out": 0.7}
    outcome = evaluate(tuner.context, Proposal((Point.of(lr, momentum),), 1.0, "reverse"))[0]

    def value(lr_, momentum_):
        return evaluate_point(tuner.context, Point.of(lr_, momentum_)).value

    h = 1e-5
    for group in ("hidden", "out"):
        for kind, point in (("lr", lr), ("momentum", momentum)):
            up, down = dict(point), dict(point)
            up[group] += h
            down[group] -= h
            args_up = (up, momentum) if kind == "lr" else (lr, up)
            args_down = (down, momentum) if kind == "lr" else (lr, down)
            numeric = (value(*args_up) - value(*args_down)) / (2 * h)
            assert outcome.metrics[f"dvalue_d{kind}[{group}]"] == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    groups = tuner.groups
    gradient = MetaGradient.from_metrics(outcome.metrics, groups)
    grad_u = log_loss_gradient(Point.of(lr, momentum), outcome.value, gradient)
    u = Point.of(lr, momentum).to_u()
    for i in range(len(u)):
        step = np.zeros(len(u))
        step[i] = 1e-6
        up = [math.exp(x) for x in (u + step)[:2]], [1 - math.exp(x) for x in (u + step)[2:]]
        down = [math.exp(x) for x in (u - step)[:2]], [1 - math.exp(x) for x in (u - step)[2:]]
        numeric = (math.log(value(dict(zip(groups, up[0])), dict(zip(groups, up[1]))))
                   - math.log(value(dict(zip(groups, down[0])), dict(zip(groups, down[1]))))) / 2e-6
        assert grad_u[i] == pytest.approx(numeric, rel=1e-4)


@pytest.fixture(scope="module")
def grouped_results(tiny):
    return {method: tune(tiny, method, budget=BUDGET, seed=0, groups="tensors") for method in GROUPED}


@pytest.mark.parametrize("method", GROUPED)
def test_every_method_searches_each_groups_box_within_budget(grouped_results, tiny, method):
    result = grouped_results[method]
    groups = ("hidden.weight", "hidden.bias", "out.weight")
    assert 0 < result.gradient_evals <= BUDGET and result.trials
    for trial in result.trials:
        assert tuple(trial.lr) == groups and tuple(trial.momentum) == groups
        assert all(tiny.space.lr_low * (1 - 1e-9) <= v <= tiny.space.lr_high * (1 + 1e-9) for v in trial.lr.values())
        assert all(tiny.space.momentum_low <= v <= tiny.space.momentum_high for v in trial.momentum.values())
    best = result.best
    assert evaluate_point(_context(tiny), best.point).value == pytest.approx(best.value, rel=1e-12)


def _context(objective):
    return MetagradTuner(objective, budget=10_000, seed=0, mode="reverse").context


def test_black_box_methods_use_different_values_per_group(grouped_results):
    """A sampler that copied one value to every group would search a 2-D space in disguise."""
    for method in ("tpe", "random", "cmaes", "gp"):
        lrs = list(grouped_results[method].trials[0].lr.values())
        assert len(set(lrs)) == len(lrs)


def test_metagrad_moves_groups_apart(tiny):
    """Starting every group at the same (η, β) (no screening: the theory point), the
    per-group meta-gradient separates them."""
    result = tune(tiny, "metagrad", budget=BUDGET, seed=0, groups="tensors", screen=0)
    steps = [t for t in result.trials if "growth_rate" in t.metrics]
    def pairs(trial):
        return {(trial.lr[g], trial.momentum[g]) for g in trial.lr}

    assert len(pairs(steps[0])) == 1
    assert len(pairs(steps[-1])) == 3


@pytest.mark.parametrize("method", sorted(set(METHODS) - set(GROUPED)))
def test_methods_without_group_spaces_say_so(tiny, method):
    with pytest.raises(ValueError, match=f"groups.*{method}"):
        tune(tiny, method, budget=BUDGET, seed=0, groups="layers")


def test_compare_and_plane_plot_show_each_group(tiny, tmp_path):
    """compare(groups=...) gives every method the same per-group space; the η–β plane shows
    each trial once per group (3 points per trial here)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PathCollection

    from metatune import plots
    from metatune.compare import compare

    cmp = compare(tiny, ["random", "metagrad"], budget=BUDGET, seeds=[0], groups="tensors")
    for runs in cmp.results.values():
        assert all(len(t.lr) == 3 for t in runs[0].trials)
    figure = plots.plane_figure(cmp)
    scatter = [c for c in figure.axes[0].collections if isinstance(c, PathCollection)]
    trials = [t for runs in cmp.results.values() for t in runs[0].trials]
    assert sum(len(c.get_offsets()) for c in scatter) == 3 * len(trials)


def test_minibatch_objectives_start_at_no_more_than_condition_100(tiny):
    """On minibatches the theory point assumes κ ≤ 100 whatever Lanczos finds: told λ_min =
    10⁻⁴, λ_max = 2 at T = 200 (which alone would allow κ_T = (200/5)² = 1600), it starts at
    heavy ball's optimum on [0.02, 2]: β* = (9/11)² = 81/121, η* = 4/(√2 + √0.02)² = 4/2.42,
    for every group."""
    from metatune.tuners.base import Curvature

    tuner = MetagradTuner(tiny, budget=100_000, seed=0, steps=200, groups="layers", mode="reverse",
                          curvature=Curvature(1e-4, 2.0, 0.0))
    point = tuner.decode_point(tuner.theory_point())
    lr, momentum = point.lr, point.momentum
    assert lr == pytest.approx({"hidden": 4 / 2.42, "out": 4 / 2.42}, rel=1e-12)
    assert momentum == pytest.approx({"hidden": 81 / 121, "out": 81 / 121}, rel=1e-12)
