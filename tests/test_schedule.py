"""Schedules of η_t and β_t (metatune.schedule): runs against torch.optim.SGD with its
param_groups reset before every step, per-knot meta-gradients against central finite
differences and the chain rule through the per-step ones, the module's closed forms, its
argument checks, a schedule's Point forms, and tuning over knots and warm-up + cosine.

The knot paths of the references come from ``numpy.interp`` over the knot steps
τ_k = k(T − 1)/(K − 1) (in log η for learning rates), not from the library's interpolation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import metatune as mt
from metatune.objectives import get as get_objective
from metatune.point import MetaGradient, Point
from metatune.schedule import (
    FINAL_RANGE,
    WARMUP_COSINE,
    WARMUP_RANGE,
    Knots,
    Schedule,
    Shape,
    interpolate,
    knot_positions,
    knot_weights,
    warmup_cosine_factors,
)

STEPS = 12
F64 = torch.float64


def _path(knots: list[float], steps: int, *, log: bool) -> list[float]:
    """η_t (``log``) or β_t for t < steps from K knot values at τ_k = k(T − 1)/(K − 1), by
    ``numpy.interp`` (piecewise linear in log η or in β)."""
    if len(knots) == 1:
        return [float(knots[0])] * steps
    tau = np.arange(len(knots)) * (steps - 1) / (len(knots) - 1)
    values = np.log(knots) if log else np.asarray(knots, dtype=float)
    path = np.interp(np.arange(steps), tau, values)
    return (np.exp(path) if log else path).tolist()


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _relative_error(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def _sgd_with_schedule(problem, groups, steps, nesterov):
    """θ_T from torch.optim.SGD, one param group per (names, η path, β path), each group's lr
    and momentum set to step t's values before step t."""
    model = problem.model
    model.load_state_dict({k: v.clone() for k, v in problem.params.items()}, strict=False)
    named = dict(model.named_parameters())
    param_groups = [{"params": [named[n] for n in names], "lr": lrs[0], "momentum": momenta[0]}
                    for names, lrs, momenta in groups]
    optimizer = torch.optim.SGD(param_groups, lr=groups[0][1][0], momentum=groups[0][2][0], nesterov=nesterov)
    for t, batch in enumerate(problem.batches[:steps]):
        for group, (_, lrs, momenta) in zip(optimizer.param_groups, groups):
            group["lr"], group["momentum"] = lrs[t], momenta[t]
        optimizer.zero_grad()
        problem.train_loss(named, batch).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in named.items()}


def _names(problem, prefix: str) -> list[str]:
    return [n for n in problem.params if n.startswith(prefix + ".")]


# -- 1. a scheduled run is torch.optim.SGD with its param_groups moved every step ------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_per_step_tensors_match_sgd_with_param_groups_reset_each_step(mlp, nesterov):
    lrs = [0.05 + 0.4 * abs(math.sin(1.3 * t)) for t in range(STEPS)]
    momenta = [0.2 + 0.7 * abs(math.cos(0.7 * t)) for t in range(STEPS)]
    reference = _sgd_with_schedule(mlp, [(list(mlp.params), lrs, momenta)], STEPS, nesterov)
    run = mt.unroll(mlp.train_loss, mlp.params, _tensor(lrs), _tensor(momenta), STEPS, mlp.batches, nesterov)
    assert _relative_error(run.params, reference) <= 1e-10
    # the schedule matters: its mean held constant ends elsewhere
    flat = mt.unroll(mlp.train_loss, mlp.params, float(np.mean(lrs)), float(np.mean(momenta)), STEPS,
                     mlp.batches, nesterov)
    assert _relative_error(flat.params, reference) > 1e-3


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("lr_knots", "momentum_knots"), [
    ([0.2, 0.6, 0.1, 0.35], [0.5, 0.9, 0.3]),
    ([0.4, 0.05], [0.95, 0.6, 0.8, 0.7, 0.85]),
])
def test_knots_match_sgd_on_the_log_and_linear_interpolated_paths(mlp, nesterov, lr_knots, momentum_knots):
    lrs, momenta = _path(lr_knots, STEPS, log=True), _path(momentum_knots, STEPS, log=False)
    reference = _sgd_with_schedule(mlp, [(list(mlp.params), lrs, momenta)], STEPS, nesterov)
    run = mt.unroll(mlp.train_loss, mlp.params, Knots(lr_knots), Knots(momentum_knots), STEPS, mlp.batches,
                    nesterov)
    assert _relative_error(run.params, reference) <= 1e-10
    # η interpolated linearly instead of in log η is a different run
    linear = _sgd_with_schedule(mlp, [(list(mlp.params), _path(lr_knots, STEPS, log=False), momenta)], STEPS,
                                nesterov)
    assert _relative_error(linear, reference) > 1e-4


@pytest.mark.parametrize("nesterov", [False, True])
def test_per_group_knots_match_one_sgd_param_group_per_prefix(mlp, nesterov):
    """Each group its own K (and its own form of β: knots in one, a tensor per step in the other)."""
    lr = {"0": Knots([0.3, 0.1, 0.2]), "2": Knots([0.05, 0.25])}
    beta_2 = [0.3 + 0.05 * t for t in range(STEPS)]
    momentum = {"0": Knots([0.9, 0.6, 0.8, 0.7]), "2": _tensor(beta_2)}
    groups = [
        (_names(mlp, "0"), _path([0.3, 0.1, 0.2], STEPS, log=True),
         _path([0.9, 0.6, 0.8, 0.7], STEPS, log=False)),
        (_names(mlp, "2"), _path([0.05, 0.25], STEPS, log=True), beta_2),
    ]
    reference = _sgd_with_schedule(mlp, groups, STEPS, nesterov)
    run = mt.unroll(mlp.train_loss, mlp.params, lr, momentum, STEPS, mlp.batches, nesterov)
    assert _relative_error(run.params, reference) <= 1e-10
    swapped = mt.unroll(mlp.train_loss, mlp.params, {"0": lr["2"], "2": lr["0"]}, momentum, STEPS,
                        mlp.batches, nesterov)
    assert _relative_error(swapped.params, reference) > 1e-3  # the groups really differ


# -- 2. per-knot meta-gradients against central finite differences ---------------------------------


def _knot_differences(problem, lr_knots, momentum_knots, nesterov, h=1e-5):
    """Central differences of ℓ_val(θ_T) in each knot: η_k·(1 ± h) (a relative step), β_k ± h."""

    def value(lrs, momenta):
        run = mt.unroll(problem.train_loss, problem.params, Knots(lrs), Knots(momenta), STEPS,
                        problem.batches, nesterov)
        return float(problem.val_loss(run.params))

    def moved(values, k, delta):
        return [x + delta if j == k else x for j, x in enumerate(values)]

    d_lr = [(value(moved(lr_knots, k, h * x), momentum_knots)
             - value(moved(lr_knots, k, -h * x), momentum_knots)) / (2 * h * x)
            for k, x in enumerate(lr_knots)]
    d_momentum = [(value(lr_knots, moved(momentum_knots, k, h))
                   - value(lr_knots, moved(momentum_knots, k, -h))) / (2 * h)
                  for k in range(len(momentum_knots))]
    return d_lr, d_momentum


def _close_per_knot(got: list[float], reference: list[float], tol: float) -> bool:
    """|got_k − ref_k| ≤ tol · max_k |ref_k| for every knot (a small knot's derivative is judged
    on the scale of its neighbours')."""
    scale = max(abs(x) for x in reference)
    return len(got) == len(reference) and all(abs(a - b) <= tol * scale for a, b in zip(got, reference))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("lr_knots", "momentum_knots"), [
    ([0.2, 0.6, 0.1, 0.35], [0.5, 0.9, 0.3]),
    ([0.3, 0.1, 0.5], [0.9, 0.6, 0.8, 0.7]),
])
def test_per_knot_meta_gradient_matches_central_differences(mlp, nesterov, lr_knots, momentum_knots):
    """Forward, reverse and checkpointed reverse (segments of 5 over T = 12) each match the
    central differences per knot to 1e-6 of the largest knot derivative of its kind.

    Margin: at h = 1e-5 the differences agree with the exact values to about 1e-10 of that
    scale (truncation h² ≈ 1e-10, rounding ≈ 1e-16/h ≈ 1e-11), 10⁴ below the tolerance. A
    wrong answer misses by 10⁵ above it: η's knot coefficients of linear interpolation
    (W[t,k] instead of η_t W[t,k]/η_k) are off by 0.45–0.55 of that scale on these knots;
    dropping the right-hand knot's term of each step, by 0.2–1.05 (η) and 0.47–0.74 (β).
    """
    d_lr, d_momentum = _knot_differences(mlp, lr_knots, momentum_knots, nesterov)
    args = (mlp.train_loss, mlp.val_loss, mlp.params, Knots(lr_knots), Knots(momentum_knots), STEPS,
            mlp.batches, nesterov)
    results = {
        "forward": mt.hypergrad(*args, mode="forward"),
        "reverse": mt.hypergrad(*args, mode="reverse"),
        "checkpointed": mt.hypergrad(*args, mode="reverse", checkpoint=5),
    }
    for name, hg in results.items():
        assert isinstance(hg.lr, list) and isinstance(hg.momentum, list), name
        assert _close_per_knot(hg.lr, d_lr, 1e-6), (name, hg.lr, d_lr)
        assert _close_per_knot(hg.momentum, d_momentum, 1e-6), (name, hg.momentum, d_momentum)
    assert _close_per_knot(results["reverse"].lr, results["forward"].lr, 1e-12)
    assert _close_per_knot(results["checkpointed"].momentum, results["reverse"].momentum, 1e-12)


# -- 3. chain rule: per-step meta-gradients mapped to the knots ------------------------------------


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_per_step_meta_gradient_chained_to_knots_equals_the_per_knot_one(mlp, mode):
    """∂ℓ/∂η_k = Σ_t ∂ℓ/∂η_t · η_t W[t,k]/η_k and ∂ℓ/∂β_k = Σ_t ∂ℓ/∂β_t · W[t,k], W = knot_weights."""
    lr_knots, momentum_knots = [0.2, 0.6, 0.1, 0.35], [0.5, 0.9, 0.3]
    lr_path, momentum_path = _path(lr_knots, STEPS, log=True), _path(momentum_knots, STEPS, log=False)
    per_step = mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, _tensor(lr_path),
                            _tensor(momentum_path), STEPS, mlp.batches, mode=mode)
    per_knot = mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, Knots(lr_knots), Knots(momentum_knots),
                            STEPS, mlp.batches, mode=mode)
    assert len(per_step.lr) == STEPS and len(per_step.momentum) == STEPS
    assert per_step.value == pytest.approx(per_knot.value, rel=1e-13)
    w_lr, w_momentum = knot_weights(len(lr_knots), STEPS), knot_weights(len(momentum_knots), STEPS)
    g_lr, g_momentum = _tensor(per_step.lr), _tensor(per_step.momentum)
    chained_lr = ((g_lr * _tensor(lr_path)) @ (w_lr / _tensor(lr_knots))).tolist()
    chained_momentum = (g_momentum @ w_momentum).tolist()
    assert _close_per_knot(chained_lr, per_knot.lr, 1e-10)
    assert _close_per_knot(chained_momentum, per_knot.momentum, 1e-10)
    # the η_t/η_k factor of log interpolation matters at this tolerance
    assert not _close_per_knot((g_lr @ w_lr).tolist(), per_knot.lr, 1e-2)


def test_as_many_knots_as_steps_is_the_per_step_schedule(mlp):
    """K = T puts a knot on every step (W = I): the same run and the same gradient per step."""
    lrs = [0.1 + 0.02 * t for t in range(STEPS)]
    momenta = [0.9 - 0.03 * t for t in range(STEPS)]
    assert torch.equal(knot_weights(STEPS, STEPS), torch.eye(STEPS, dtype=F64))
    args = (mlp.train_loss, mlp.val_loss, mlp.params)
    knots = mt.hypergrad(*args, Knots(lrs), Knots(momenta), STEPS, mlp.batches, mode="reverse")
    steps = mt.hypergrad(*args, _tensor(lrs), _tensor(momenta), STEPS, mlp.batches, mode="reverse")
    assert knots.value == pytest.approx(steps.value, rel=1e-14)
    assert _close_per_knot(knots.lr, steps.lr, 1e-12)
    assert _close_per_knot(knots.momentum, steps.momentum, 1e-12)


def test_truncated_per_step_gradient_is_zero_before_the_window_and_exact_inside(mlp):
    """η_t for t ≥ T − K acts only inside the last K steps, so truncated(K) gets its exact
    derivative; the steps before the window get none."""
    lrs = _tensor([0.1 + 0.02 * t for t in range(STEPS)])
    momenta = _tensor([0.9 - 0.03 * t for t in range(STEPS)])
    args = (mlp.train_loss, mlp.val_loss, mlp.params, lrs, momenta, STEPS, mlp.batches)
    full = mt.hypergrad(*args, mode="reverse")
    window = 5
    for checkpoint in (None, 2):
        short = mt.hypergrad(*args, mode="truncated", truncate=window, checkpoint=checkpoint)
        for got, exact in ((short.lr, full.lr), (short.momentum, full.momentum)):
            assert got[:STEPS - window] == [0.0] * (STEPS - window)
            assert _close_per_knot(got[STEPS - window:], exact[STEPS - window:], 1e-12)


# -- 4. per-group schedules ------------------------------------------------------------------------


def test_per_group_knots_reverse_equals_forward(mlp):
    lr = {"0": Knots([0.3, 0.1, 0.2]), "2": Knots([0.05, 0.25, 0.1, 0.15])}
    args = (mlp.train_loss, mlp.val_loss, mlp.params, lr, 0.8, STEPS, mlp.batches)
    forward = mt.hypergrad(*args, mode="forward")
    reverse = mt.hypergrad(*args, mode="reverse")
    checkpointed = mt.hypergrad(*args, mode="reverse", checkpoint=5)
    assert set(forward.lr) == {"0", "2"} and [len(forward.lr["0"]), len(forward.lr["2"])] == [3, 4]
    assert isinstance(forward.momentum, float)
    for other in (reverse, checkpointed):
        assert other.value == pytest.approx(forward.value, rel=1e-13)
        for group in ("0", "2"):
            assert _close_per_knot(other.lr[group], forward.lr[group], 1e-10), group
        assert other.momentum == pytest.approx(forward.momentum, rel=1e-10)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_equal_knots_sum_to_the_constant_groups_gradient(mlp, mode):
    """Knots all equal to η_g hold η_g over the run; since each row of W sums to 1, the knot
    derivatives of a group sum to the derivative of its constant η_g (and likewise β)."""
    lr, momentum = {"0": 0.3, "2": 0.1}, {"0": 0.9, "2": 0.5}
    knotted_lr = {"0": Knots([0.3] * 3), "2": Knots([0.1] * 4)}
    knotted_momentum = {"0": Knots([0.9] * 2), "2": 0.5}
    args = (mlp.train_loss, mlp.val_loss, mlp.params)
    constant = mt.hypergrad(*args, lr, momentum, STEPS, mlp.batches, mode=mode)
    knotted = mt.hypergrad(*args, knotted_lr, knotted_momentum, STEPS, mlp.batches, mode=mode)
    assert knotted.value == pytest.approx(constant.value, rel=1e-13)
    for group in ("0", "2"):
        assert math.fsum(knotted.lr[group]) == pytest.approx(constant.lr[group], rel=1e-10), group
    assert math.fsum(knotted.momentum["0"]) == pytest.approx(constant.momentum["0"], rel=1e-10)
    assert knotted.momentum["2"] == pytest.approx(constant.momentum["2"], rel=1e-10)
    assert len({round(x, 6) for x in knotted.lr["0"]}) == 3  # the knots' shares differ


# -- 5. one knot is a constant ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_one_knot_is_exactly_the_constant(mlp, mode):
    args = (mlp.train_loss, mlp.val_loss, mlp.params)
    constant = mt.hypergrad(*args, 0.3, 0.9, STEPS, mlp.batches, mode=mode)
    one = mt.hypergrad(*args, Knots([0.3]), Knots([0.9]), STEPS, mlp.batches, mode=mode)
    assert isinstance(one.lr, float) and isinstance(one.momentum, float)
    assert (one.value, one.lr, one.momentum) == (constant.value, constant.lr, constant.momentum)
    grouped = mt.hypergrad(*args, {"0": Knots([0.3]), "2": 0.1}, {"0": 0.9, "2": Knots([0.5])}, STEPS,
                           mlp.batches, mode=mode)
    plain = mt.hypergrad(*args, {"0": 0.3, "2": 0.1}, {"0": 0.9, "2": 0.5}, STEPS, mlp.batches, mode=mode)
    assert (grouped.value, grouped.lr, grouped.momentum) == (plain.value, plain.lr, plain.momentum)
    run = mt.unroll(mlp.train_loss, mlp.params, Knots([0.3]), Knots([0.9]), STEPS, mlp.batches)
    assert all(torch.equal(run.params[n], constant.params[n]) for n in run.params)


# -- 6. the schedule module's closed forms ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7).flatmap(lambda k: st.tuples(st.just(k), st.integers(k, 40))))
def test_knot_weights_are_numpy_interp_hat_functions_whose_rows_sum_to_one(sizes):
    knots, steps = sizes
    weights = knot_weights(knots, steps)
    assert weights.shape == (steps, knots) and weights.dtype == F64
    assert torch.allclose(weights.sum(dim=1), torch.ones(steps, dtype=F64), rtol=0, atol=1e-15)
    assert bool((weights >= 0).all()) and bool(((weights > 0).sum(dim=1) <= 2).all())
    for k in range(knots):
        unit = [1.0 if j == k else 0.0 for j in range(knots)]
        assert np.allclose(weights[:, k].numpy(), _path(unit, steps, log=False), rtol=0, atol=1e-13)
    positions = knot_positions(knots, steps)
    assert len(positions) == steps and all(0 <= i <= max(knots - 2, 0) and 0 <= a <= 1 for i, a in positions)


positive = st.floats(1e-4, 10.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(positive, min_size=1, max_size=6).flatmap(
    lambda values: st.tuples(st.just(values), st.integers(len(values), 30))))
def test_interpolated_path_starts_and_ends_on_the_knots_and_stays_in_their_box(case):
    values, steps = case
    for log in (True, False):
        path = interpolate(_tensor(values), steps, log=log)
        assert path.shape == (steps,)
        assert float(path[0]) == pytest.approx(values[0], rel=1e-14)
        assert float(path[-1]) == pytest.approx(values[-1], rel=1e-14)
        low, high = min(values), max(values)
        assert bool((path >= low * (1 - 1e-14)).all()) and bool((path <= high * (1 + 1e-14)).all())
        assert np.allclose(path.numpy(), _path(values, steps, log=log), rtol=1e-13, atol=0)


def test_interpolated_path_passes_through_every_knot_at_its_knot_step():
    """T − 1 divisible by K − 1 puts knot k on step τ_k = k(T − 1)/(K − 1) = 4k exactly."""
    values = [0.3, 0.01, 0.5, 0.02]
    for log in (True, False):
        path = interpolate(_tensor(values), 13, log=log)
        assert [float(path[4 * k]) for k in range(4)] == pytest.approx(values, rel=1e-14)
        # halfway between knots: the geometric mean for η, the arithmetic one for β
        middle = math.sqrt(0.3 * 0.01) if log else (0.3 + 0.01) / 2
        assert float(path[2]) == pytest.approx(middle, rel=1e-14)


def test_knot_weights_and_positions_by_hand():
    positions = knot_positions(3, 7)
    assert [i for i, _ in positions] == [0, 0, 0, 1, 1, 1, 1]
    assert [a for _, a in positions] == pytest.approx([0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3, 1], abs=1e-15)
    expected = _tensor([[1, 0, 0], [1 / 3, 2 / 3, 0], [0, 2 / 3, 1 / 3], [0, 0, 1]])
    assert torch.allclose(knot_weights(3, 4), expected, rtol=0, atol=1e-15)
    assert knot_weights(1, 3).tolist() == [[1.0], [1.0], [1.0]]


def test_warmup_cosine_factors_by_hand():
    """T = 10, warm-up 0.3 (W = 3), final 0.2: (t + 1)/3 for t < 3, then
    0.2 + 0.8·½(1 + cos(π(t − 3)/6))."""
    half_root3 = math.sqrt(3) / 2
    expected = [1 / 3, 2 / 3, 1.0, 1.0, 0.2 + 0.4 * (1 + half_root3), 0.8, 0.6, 0.4,
                0.2 + 0.4 * (1 - half_root3), 0.2]
    assert warmup_cosine_factors(10, 0.3, 0.2).tolist() == pytest.approx(expected, rel=1e-14)
    # no warm-up: a cosine from the peak at t = 0 to final·peak at t = T − 1
    assert warmup_cosine_factors(5, 0.0, 0.5).tolist() == pytest.approx(
        [1.0, 0.75 + 0.25 * math.sqrt(0.5), 0.75, 0.75 - 0.25 * math.sqrt(0.5), 0.5], rel=1e-14)
    # final = 1: warm-up, then the peak held
    assert warmup_cosine_factors(8, 0.25, 1.0).tolist() == pytest.approx([0.5] + [1.0] * 7, rel=1e-14)


def test_shape_paths_are_peak_times_factors_and_the_knot_interpolation():
    shape = Shape.warmup_cosine(0.3, 0.2)
    peak = _tensor([0.4])
    expected = 0.4 * warmup_cosine_factors(10, 0.3, 0.2)
    assert torch.allclose(shape.lr_path(peak, 10), expected, rtol=1e-15, atol=0)
    assert shape.momentum_path(_tensor([0.7]), 10).tolist() == [0.7] * 10
    knots = Shape.of_knots(3)
    values = [0.2, 0.05, 0.3]
    lr_path, momentum_path = knots.lr_path(_tensor(values), 9), knots.momentum_path(_tensor(values), 9)
    assert np.allclose(lr_path.numpy(), _path(values, 9, log=True), rtol=1e-14, atol=0)
    assert np.allclose(momentum_path.numpy(), _path(values, 9, log=False), rtol=1e-14, atol=0)
    assert Shape().constant and not knots.constant and not shape.constant


# -- 7. argument checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": Knots([0.1] * 6)}, "lr='6 knots' is invalid: expected at most steps=5 knots"),
    ({"lr": {"0": Knots([0.1] * 6), "2": 0.1}}, "lr['0']='6 knots' is invalid"),
    ({"lr": torch.full((4,), 0.1, dtype=F64)},
     "lr=(4,) is invalid: expected a scalar, a tensor of length steps=5"),
    ({"momentum": torch.full((6,), 0.5, dtype=F64)}, "momentum=(6,) is invalid"),
    ({"lr": _tensor([0.1, 0.1, -0.1, 0.1, 0.1])},
     "lr[2]=-0.1 is invalid: expected a finite learning rate > 0"),
    ({"lr": {"0": _tensor([0.1, 0.1, 0.1, 0.1, -0.1]), "2": 0.1}}, "lr['0'][4]=-0.1 is invalid"),
    ({"lr": Knots([0.1, 0.0])}, "lr[1]=0.0 is invalid"),
    ({"momentum": Knots([0.5, 1.0, 0.5])}, "momentum[1]=1.0 is invalid: expected a momentum in [0, 1)"),
    ({"momentum": {"0": 0.5, "2": Knots([0.5, 0.2, 1.5])}}, "momentum['2'][2]=1.5 is invalid"),
    ({"momentum": _tensor([0.5, 0.5, 0.5, 0.5, -0.1])}, "momentum[4]=-0.1 is invalid"),
])
def test_bad_schedules_raise_value_error_naming_the_step_or_knot(mlp, kwargs, message):
    args = {"lr": 0.1, "momentum": 0.5, "steps": 5, "batches": mlp.batches} | kwargs
    with pytest.raises(ValueError) as unrolled:
        mt.unroll(mlp.train_loss, mlp.params, **args)
    assert message in str(unrolled.value)
    with pytest.raises(ValueError) as differentiated:
        mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, **args)
    assert message in str(differentiated.value)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Knots([]), "Knots=[] is invalid"),
    (lambda: Knots("abc"), "Knots='abc' is invalid"),
    (lambda: Knots([0.1, True]), "Knots[1]=True is invalid"),
    (lambda: Knots(torch.zeros(2, 2)), "Knots=(2, 2) is invalid: expected a 1-d tensor"),
    (lambda: knot_positions(6, 5), "knots=6 is invalid: expected at most steps=5 knots"),
    (lambda: knot_weights(0, 5), "knots=0 is invalid"),
    (lambda: Schedule.parse(0), "schedule.knots=0 is invalid: expected an integer >= 1"),
    (lambda: Schedule.parse({"knots": 2, "bogus": 1}), "unknown: ['bogus']"),
    (lambda: Schedule.parse(True), "schedule=True is invalid"),
    (lambda: Schedule.parse(2.0), "schedule=2.0 is invalid"),
    (lambda: Schedule.parse({"shape": "linear"}), "schedule.shape='linear' is invalid"),
    (lambda: Schedule.parse({"shape": WARMUP_COSINE, "knots": 3}), "schedule.knots=3 is invalid"),
    (lambda: Schedule(knots=31).check_steps(30), "expected at most the inner steps T=30"),
    (lambda: Shape.warmup_cosine(1.0, 0.5), "schedule.warmup=1.0 is invalid: expected a number in [0, 1)"),
    (lambda: Shape.warmup_cosine(-0.1, 0.5), "schedule.warmup=-0.1 is invalid"),
    (lambda: Shape.warmup_cosine(0.2, 0.0), "schedule.final=0.0 is invalid: expected a number in (0, 1]"),
    (lambda: Shape(WARMUP_COSINE, 2, 0.1, 0.5), "schedule.knots=2 is invalid"),
    (lambda: Shape("knots", 2, warmup=0.2), "no warmup/final for a knots shape"),
    (lambda: warmup_cosine_factors(10, 1.2, 0.5), "warmup=1.2 is invalid"),
])
def test_bad_schedule_values_raise_value_error(build, message):
    with pytest.raises(ValueError) as info:
        build()
    assert message in str(info.value)


# -- 8. a schedule's Point forms -------------------------------------------------------------------


SCHEDULED_POINTS = [
    Point.of([0.1, 0.3, 0.05], [0.9, 0.5, 0.7]),
    Point.of({"0": [0.1, 0.2], "2": [0.01, 0.02]}, {"0": [0.9, 0.8], "2": [0.5, 0.0]}),
    Point.of(0.3, 0.9, Shape.warmup_cosine(0.2, 0.1)),
    Point.of({"0": 0.3, "2": 0.03}, {"0": 0.9, "2": 0.6}, Shape.warmup_cosine(0.25, 0.5)),
]


def _schedule_of(point: Point) -> Schedule:
    return Schedule(shape=WARMUP_COSINE) if point.shape.kind == WARMUP_COSINE else Schedule(knots=point.knots)


@pytest.mark.parametrize("point", SCHEDULED_POINTS)
def test_scheduled_points_round_trip_through_each_form(point):
    assert Point.from_json(json.loads(json.dumps(point.to_json()))) == point
    assert Point.from_params(point.to_params(), point.groups, _schedule_of(point)) == point
    back = Point.from_u(point.to_u(), point.groups, point.shape)
    assert back.groups == point.groups and back.shape == point.shape
    assert back.lrs == pytest.approx(point.lrs, rel=1e-14)
    assert back.momenta == pytest.approx(point.momenta, rel=1e-14, abs=1e-15)


def test_scheduled_point_forms_are_the_documented_ones():
    knots = SCHEDULED_POINTS[1]
    assert knots.knots == 2 and knots.slots == 4 and not knots.constant
    assert knots.to_json() == {"lr": {"0": [0.1, 0.2], "2": [0.01, 0.02]},
                               "momentum": {"0": [0.9, 0.8], "2": [0.5, 0.0]}}
    assert knots.to_params() == {"lr[0]@0": 0.1, "lr[0]@1": 0.2, "lr[2]@0": 0.01, "lr[2]@1": 0.02,
                                 "momentum[0]@0": 0.9, "momentum[0]@1": 0.8, "momentum[2]@0": 0.5,
                                 "momentum[2]@1": 0.0}
    assert knots.to_u().tolist() == pytest.approx(
        [math.log(x) for x in (0.1, 0.2, 0.01, 0.02)] + [math.log(1 - x) for x in (0.9, 0.8, 0.5, 0.0)])
    cosine = SCHEDULED_POINTS[2]
    assert cosine.to_json() == {"lr": 0.3, "momentum": 0.9,
                                "schedule": {"shape": WARMUP_COSINE, "warmup": 0.2, "final": 0.1}}
    assert cosine.to_params() == {"lr": 0.3, "momentum": 0.9, "warmup": 0.2, "final": 0.1}


def test_scheduled_points_give_the_engine_their_paths():
    lr, momentum = SCHEDULED_POINTS[1].hyperparameters(STEPS)
    assert isinstance(lr["0"], Knots) and lr["0"].values == (0.1, 0.2) and momentum["2"].values == (0.5, 0.0)
    lr, momentum = SCHEDULED_POINTS[2].hyperparameters(10)
    assert torch.allclose(lr, 0.3 * warmup_cosine_factors(10, 0.2, 0.1), rtol=1e-15, atol=0)
    assert momentum.tolist() == [0.9] * 10
    lr, momentum = Point.scalar(0.1, 0.9).hyperparameters(STEPS)
    assert (lr, momentum) == (0.1, 0.9)


def test_with_shape_repeats_a_constant_point_over_the_knots(mlp):
    point = Point.of({"0": 0.3, "2": 0.1}, {"0": 0.9, "2": 0.5})
    knotted = point.with_shape(Shape.of_knots(3))
    assert knotted.lrs == (0.3, 0.3, 0.3, 0.1, 0.1, 0.1) and knotted.momenta == (0.9,) * 3 + (0.5,) * 3
    assert knotted.to_json() == {"lr": {"0": [0.3] * 3, "2": [0.1] * 3},
                                 "momentum": {"0": [0.9] * 3, "2": [0.5] * 3}}
    cosine = point.with_shape(Shape.warmup_cosine(0.2, 0.1))
    assert cosine.lrs == point.lrs and cosine.shape.kind == WARMUP_COSINE
    runs = [mt.unroll(mlp.train_loss, mlp.params, *p.hyperparameters(STEPS), STEPS, mlp.batches)
            for p in (point, knotted)]
    assert _relative_error(runs[1].params, runs[0].params) <= 1e-13  # the same constant schedule
    with pytest.raises(ValueError, match="a constant point to take a schedule's shape"):
        knotted.with_shape(Shape.of_knots(2))


def test_meta_gradient_metrics_are_named_per_group_and_knot():
    gradient = MetaGradient((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0), 0.1, 2.0)
    metrics = gradient.to_metrics(("0", "2"), knots=2)
    assert metrics == {"growth_rate": 0.1, "amplification": 2.0,
                       "dvalue_dlr[0]@0": 1.0, "dvalue_dlr[0]@1": 2.0, "dvalue_dlr[2]@0": 3.0,
                       "dvalue_dlr[2]@1": 4.0, "dvalue_dmomentum[0]@0": 5.0, "dvalue_dmomentum[0]@1": 6.0,
                       "dvalue_dmomentum[2]@0": 7.0, "dvalue_dmomentum[2]@1": 8.0}
    assert MetaGradient.from_metrics(metrics, ("0", "2"), knots=2) == gradient
    scalar = MetaGradient((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 0.0, 1.0)
    flat = scalar.to_metrics(knots=3)
    assert [k for k in flat if k.startswith("dvalue")] == [
        "dvalue_dlr@0", "dvalue_dlr@1", "dvalue_dlr@2", "dvalue_dmomentum@0", "dvalue_dmomentum@1",
        "dvalue_dmomentum@2"]
    assert MetaGradient.from_metrics(flat, knots=3) == scalar
    assert gradient.as_point_values(("0", "2"), knots=2) == ({"0": [1.0, 2.0], "2": [3.0, 4.0]},
                                                             {"0": [5.0, 6.0], "2": [7.0, 8.0]})


# -- 9. tuning over a schedule ---------------------------------------------------------------------


def test_tpe_over_three_knots_stays_in_the_box_and_scores_the_interpolated_run():
    objective = get_objective("quadratic")
    space, steps = objective.space, 30
    result = mt.tune("quadratic", "tpe", budget=1_000, seed=0, steps=steps, schedule=3)
    assert len(result.trials) >= 10
    for trial in result.trials:
        point = trial.point
        assert point.shape == Shape.of_knots(3) and len(point.lrs) == 3 and len(point.momenta) == 3
        assert all(space.lr_low <= x <= space.lr_high for x in point.lrs)
        assert all(space.momentum_low <= x <= space.momentum_high for x in point.momenta)
    # a trial's value is ℓ_val after the run on the knots' log/linear paths, given per step here
    params, batches = objective.init_params(0), objective.batches(0, steps)
    finite = [t for t in result.trials if math.isfinite(t.value)][:3]
    assert finite
    for trial in finite:
        lrs = _tensor(_path(list(trial.point.lrs), steps, log=True))
        momenta = _tensor(_path(list(trial.point.momenta), steps, log=False))
        run = mt.unroll(objective.train_loss, params, lrs, momenta, steps, batches)
        assert float(objective.val_loss(run.params)) == pytest.approx(trial.value, rel=1e-10)


def test_tpe_over_warmup_cosine_samples_the_family_ranges():
    objective = get_objective("quadratic")
    space = objective.space
    result = mt.tune("quadratic", "tpe", budget=1_000, seed=0, steps=30, schedule={"shape": "warmup-cosine"})
    assert len(result.trials) >= 10
    for trial in result.trials:
        shape = trial.point.shape
        assert shape.kind == WARMUP_COSINE and trial.point.knots == 1
        assert WARMUP_RANGE[0] <= shape.warmup <= WARMUP_RANGE[1]
        assert FINAL_RANGE[0] <= shape.final <= FINAL_RANGE[1]
        assert space.lr_low <= trial.point.lrs[0] <= space.lr_high
        assert space.momentum_low <= trial.point.momenta[0] <= space.momentum_high
    assert len({t.point.shape.warmup for t in result.trials}) > 1  # the shape is searched, not fixed
