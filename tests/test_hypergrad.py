"""Meta-gradients: forward = reverse = truncated(K=T) = central finite differences = peers."""

from __future__ import annotations

import math

import pytest
import torch

import metatune as mt

STEPS = 25


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def _central_difference(problem, nesterov, which, lr=0.3, momentum=0.9, eps=1e-6, steps=STEPS):
    def value(lr_, m_):
        run = mt.unroll(problem.train_loss, problem.params, lr_, m_, steps, problem.batches, nesterov)
        return float(problem.val_loss(run.params))

    if which == "lr":
        return (value(lr + eps, momentum) - value(lr - eps, momentum)) / (2 * eps)
    return (value(lr, momentum + eps) - value(lr, momentum - eps)) / (2 * eps)


@pytest.mark.parametrize("name", ["mlp", "quadratic"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_forward_reverse_and_finite_differences_agree(request, name, nesterov):
    problem = request.getfixturevalue(name)
    lr = 0.3 if name == "mlp" else 0.05
    results = {
        mode: mt.hypergrad(problem.train_loss, problem.val_loss, problem.params, lr, 0.9, STEPS,
                           problem.batches, nesterov, mode=mode)
        for mode in ("forward", "reverse")
    }
    forward, reverse = results["forward"], results["reverse"]
    assert _relative(forward.lr, reverse.lr) <= 1e-8
    assert _relative(forward.momentum, reverse.momentum) <= 1e-8
    assert forward.value == pytest.approx(reverse.value, rel=1e-12)
    for which in ("lr", "momentum"):
        reference = _central_difference(problem, nesterov, which, lr=lr)
        assert _relative(getattr(forward, which), reference) <= 1e-6, which


def test_truncated_with_full_window_equals_reverse_and_shorter_differs(mlp):
    args = (mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches)
    reverse = mt.hypergrad(*args, mode="reverse")
    full = mt.hypergrad(*args, mode="truncated", truncate=STEPS)
    short = mt.hypergrad(*args, mode="truncated", truncate=3)
    assert _relative(full.lr, reverse.lr) <= 1e-12 and _relative(full.momentum, reverse.momentum) <= 1e-12
    assert _relative(short.lr, reverse.lr) > 1e-3  # the short horizon is biased
    assert short.window == 3 and short.gradient_evals < reverse.gradient_evals


@pytest.mark.parametrize("every", [1, 4, 7, STEPS])
def test_checkpointed_reverse_equals_plain_reverse(mlp, every):
    args = (mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches)
    plain = mt.hypergrad(*args, mode="reverse")
    checkpointed = mt.hypergrad(*args, mode="reverse", checkpoint=every)
    assert _relative(checkpointed.lr, plain.lr) <= 1e-12
    assert _relative(checkpointed.momentum, plain.momentum) <= 1e-12
    assert checkpointed.growth_rate == pytest.approx(plain.growth_rate, rel=1e-9, abs=1e-12)
    assert torch.allclose(checkpointed.train_losses, plain.train_losses, rtol=1e-12)


def test_truncated_checkpointed_equals_truncated(mlp):
    args = (mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches)
    a = mt.hypergrad(*args, mode="truncated", truncate=10)
    b = mt.hypergrad(*args, mode="truncated", truncate=10, checkpoint=3)
    assert _relative(a.lr, b.lr) <= 1e-12 and _relative(a.momentum, b.momentum) <= 1e-12


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_per_group_hypergradients_match_finite_differences(mlp, mode):
    lr, momentum = {"0": 0.3, "2": 0.1}, {"0": 0.9, "2": 0.5}
    hg = mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, lr, momentum, STEPS, mlp.batches, mode=mode)
    assert set(hg.lr) == {"0", "2"} and set(hg.momentum) == {"0", "2"}
    eps = 1e-6
    for kind, base, grads in (("lr", lr, hg.lr), ("momentum", momentum, hg.momentum)):
        for group in base:
            values = []
            for sign in (1, -1):
                moved = dict(base, **{group: base[group] + sign * eps})
                hyper = {"lr": lr, "momentum": momentum, kind: moved}
                run = mt.unroll(mlp.train_loss, mlp.params, hyper["lr"], hyper["momentum"], STEPS, mlp.batches)
                values.append(float(mlp.val_loss(run.params)))
            assert _relative(grads[group], (values[0] - values[1]) / (2 * eps)) <= 1e-6, (kind, group)


def test_scalar_gradient_is_the_sum_of_equal_group_gradients(mlp):
    args = (mlp.train_loss, mlp.val_loss, mlp.params)
    scalar = mt.hypergrad(*args, 0.3, 0.9, STEPS, mlp.batches)
    grouped = mt.hypergrad(*args, {"0": 0.3, "2": 0.3}, {"0": 0.9, "2": 0.9}, STEPS, mlp.batches)
    assert _relative(sum(grouped.lr.values()), scalar.lr) <= 1e-10
    assert _relative(sum(grouped.momentum.values()), scalar.momentum) <= 1e-10


def test_torchopt_agrees_on_the_learning_rate_gradient(mlp):
    torchopt = pytest.importorskip("torchopt")
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    optimizer = torchopt.sgd(lr=lr, momentum=0.9)
    names, params = list(mlp.params), tuple(v.clone().requires_grad_() for v in mlp.params.values())
    state = optimizer.init(params)
    for batch in mlp.batches[:STEPS]:
        grads = torch.autograd.grad(mlp.train_loss(dict(zip(names, params)), batch), params, create_graph=True)
        updates, state = optimizer.update(grads, state, inplace=False)
        params = torchopt.apply_updates(params, updates, inplace=False)
    (reference,) = torch.autograd.grad(mlp.val_loss(dict(zip(names, params))), lr)
    ours = mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches, mode="forward")
    assert _relative(ours.lr, float(reference)) <= 1e-10


@pytest.mark.parametrize("nesterov", [False, True])
def test_higher_agrees_on_both_hypergradients(mlp, nesterov):
    higher = pytest.importorskip("higher")
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    momentum = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    names, params = list(mlp.params), [v.clone().requires_grad_() for v in mlp.params.values()]
    optimizer = torch.optim.SGD(params, lr=0.3, momentum=0.9, nesterov=nesterov)
    diff = higher.optim.get_diff_optim(optimizer, params, override={"lr": [lr], "momentum": [momentum]})
    for batch in mlp.batches[:STEPS]:
        params = diff.step(mlp.train_loss(dict(zip(names, params)), batch), params=params)
    ref_lr, ref_m = torch.autograd.grad(mlp.val_loss(dict(zip(names, params))), (lr, momentum))
    ours = mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches, nesterov)
    assert _relative(ours.lr, float(ref_lr)) <= 1e-10 and _relative(ours.momentum, float(ref_m)) <= 1e-10


def _scalar_quadratic(curvature: float):
    """ℓ = ½ λ x² for train and validation: the transition's ρ is known in closed form."""
    loss = lambda p, b=None: 0.5 * curvature * (p["x"] ** 2).sum()  # noqa: E731
    return loss, {"x": torch.tensor([1.0], dtype=torch.float64)}


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_growth_rate_tracks_log_spectral_radius_when_unstable(mode):
    loss, params = _scalar_quadratic(1.0)
    lr, momentum, steps = 4.2, 0.5, 60  # ηλ = 4.2 > 2(1+β) = 3: unstable
    rho = mt.stability.spectral_radius(lr, momentum, [1.0])
    hg = mt.hypergrad(loss, loss, params, lr, momentum, steps, mode=mode)
    assert rho > 1 and not hg.diverged
    assert hg.growth_rate == pytest.approx(math.log(rho), rel=0.05)
    assert hg.amplification > 1e5


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_growth_rate_is_not_positive_when_stable(mode):
    loss, params = _scalar_quadratic(1.0)
    hg = mt.hypergrad(loss, loss, params, 0.5, 0.5, 200, mode=mode)
    assert hg.growth_rate <= 1e-3


@pytest.mark.parametrize("mode", ["forward", "reverse", "truncated"])
def test_divergence_is_flagged_not_raised(mode):
    loss, params = _scalar_quadratic(1.0)
    kwargs = {"truncate": 5} if mode == "truncated" else {}
    hg = mt.hypergrad(loss, loss, params, 100.0, 0.9, 400, mode=mode, **kwargs)
    assert hg.diverged
    stable = mt.hypergrad(loss, loss, params, 0.1, 0.9, 400, mode=mode, **kwargs)
    assert not stable.diverged


def test_cost_is_counted_in_gradient_evaluations(mlp):
    """Without ``costs=`` the default multiples apply (tangent 2, backward step 2, primal 1;
    tests/test_costs.py checks measured multiples against executed FLOPs). Worked for T = 25:"""
    args = (mlp.train_loss, mlp.val_loss, mlp.params, 0.3, 0.9, STEPS, mlp.batches)
    assert mt.hypergrad(*args, mode="forward").gradient_evals == 126  # 25 × (1 + 2 × 2) + 1 (validation)
    assert mt.hypergrad(*args, mode="reverse").gradient_evals == 76  # 25 forward + 25 × 2 backward + 1
    # segments of 5: all but the last (kept from the forward pass) run again, + 20
    assert mt.hypergrad(*args, mode="reverse", checkpoint=5).gradient_evals == 96
    assert mt.hypergrad(*args, mode="truncated", truncate=3).gradient_evals == 32  # 25 + 3 × 2 + 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"mode": "sideways"}, "mode='sideways'"),
        ({"mode": "truncated"}, "truncate=None"),
        ({"mode": "truncated", "truncate": 0}, "truncate=0"),
        ({"mode": "truncated", "truncate": STEPS + 1}, f"truncate={STEPS + 1}"),
        ({"mode": "reverse", "truncate": 3}, "truncate=3"),
        ({"mode": "forward", "checkpoint": 3}, "checkpoint=3"),
        ({"mode": "reverse", "checkpoint": 0}, "checkpoint=0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"steps": 0}, "steps=0"),
        ({"batches": [None] * 3}, "batches="),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(mlp, kwargs, named):
    args = dict(lr=0.1, momentum=0.9, steps=STEPS, batches=mlp.batches) | kwargs
    with pytest.raises(ValueError, match="is invalid: expected") as info:
        mt.hypergrad(mlp.train_loss, mlp.val_loss, mlp.params, **args)
    assert named in str(info.value)


def test_non_scalar_validation_loss_is_refused(mlp):
    with pytest.raises(ValueError, match=r"val_loss\(params\)"):
        mt.hypergrad(mlp.train_loss, lambda p: p["0.bias"] * 2, mlp.params, 0.1, 0.9, 3, mlp.batches)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_final_state_and_resuming_velocity_match_unroll(mlp, mode):
    first = mt.unroll(mlp.train_loss, mlp.params, 0.3, 0.9, 7, mlp.batches)
    hg = mt.hypergrad(mlp.train_loss, mlp.val_loss, first.params, 0.3, 0.9, 5, mlp.batches[7:], mode=mode,
                      velocity=first.velocity)
    whole = mt.unroll(mlp.train_loss, mlp.params, 0.3, 0.9, 12, mlp.batches)
    for name in whole.params:
        assert torch.allclose(hg.params[name], whole.params[name], rtol=1e-12, atol=1e-14)
        assert torch.allclose(hg.velocity[name], whole.velocity[name], rtol=1e-12, atol=1e-14)
    eps = 1e-6
    values = [float(mlp.val_loss(mt.unroll(mlp.train_loss, first.params, 0.3 + s * eps, 0.9, 5, mlp.batches[7:],
                                           velocity=first.velocity).params)) for s in (1, -1)]
    assert _relative(hg.lr, (values[0] - values[1]) / (2 * eps)) <= 1e-6
