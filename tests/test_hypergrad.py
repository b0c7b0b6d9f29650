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
    """Without ``costs=`` the default multiple applies (backward step 2;
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


# --- the pieces of forward mode against independent references --------------------------------


def test_hessian_vector_products_by_double_backward_equal_the_explicit_hessian():
    """gradient_and_hvps against torch.autograd.functional.hessian, including a parameter the
    loss is linear in (its gradient has no graph: H s = 0 in its rows and columns)."""
    from metatune.hessian import gradient_and_hvps

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=gen, dtype=torch.float64)

    def loss(p, batch=None):  # noqa: ANN001, ANN202
        return torch.tanh(a @ p["w"]).pow(2).sum() + (p["w"] ** 2).sum() * p["s"] + 3.0 * p["c"].sum()

    params = {"w": torch.randn(3, generator=gen, dtype=torch.float64), "s": torch.tensor(0.7, dtype=torch.float64),
              "c": torch.randn(2, generator=gen, dtype=torch.float64)}
    directions = {n: torch.randn((2, *p.shape), generator=gen, dtype=torch.float64) for n, p in params.items()}
    grads, hvps, value = gradient_and_hvps(loss, params, directions, None)

    flat = torch.cat([p.reshape(-1) for p in params.values()])
    sizes = [p.numel() for p in params.values()]

    def flat_loss(x):  # noqa: ANN001, ANN202
        return loss({n: piece.view_as(p) for (n, p), piece in zip(params.items(), x.split(sizes))})

    hessian = torch.autograd.functional.hessian(flat_loss, flat)
    expected_grad = torch.func.grad(flat_loss)(flat)
    assert torch.allclose(torch.cat([g.reshape(-1) for g in grads.values()]), expected_grad, rtol=1e-12, atol=1e-12)
    assert float(value) == pytest.approx(float(flat_loss(flat)), rel=1e-14)
    for i in range(2):
        s = torch.cat([d[i].reshape(-1) for d in directions.values()])
        got = torch.cat([h[i].reshape(-1) for h in hvps.values()])
        assert torch.allclose(got, hessian @ s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_written_out_tangent_step_equals_a_jvp_of_the_update_rule(nesterov):
    """advance against torch.func.jvp of dynamics' rule in (θ, v, g, h) over h = (η₀, η₁, η₂,
    β₃, β₄): parameter "a" takes η₀ and β₃; "b" takes a step between two knots, η = exp(¼ log η₁
    + ¾ log η₂) and β = 0.4 β₃ + 0.6 β₄, so its rows hold two coefficients each."""
    from metatune import dynamics
    from metatune.hypergrad.forward import advance

    gen = torch.Generator().manual_seed(1)

    def randn(*shape):  # noqa: ANN001, ANN202
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def values(h):  # noqa: ANN001, ANN202
        lr_b = torch.exp(0.25 * torch.log(h[1]) + 0.75 * torch.log(h[2]))
        return dynamics.Hyperparameters({"a": h[0], "b": lr_b}, {"a": h[3], "b": 0.4 * h[3] + 0.6 * h[4]})

    params, velocity, grads = ({"a": randn(3, 2), "b": randn(4)} for _ in range(3))
    hyper = torch.tensor([0.1, 0.05, 0.2, 0.9, 0.5], dtype=torch.float64)
    k = len(hyper)
    s_params, s_velocity, hvps = ({"a": randn(k, 3, 2), "b": randn(k, 4)} for _ in range(3))
    at = values(hyper)
    lr_b = at.lr["b"]
    lr_rows = {"a": ((0, 1.0),), "b": ((1, lr_b * 0.25 / hyper[1]), (2, lr_b * 0.75 / hyper[2]))}
    momentum_rows = {"a": ((3, 1.0),), "b": ((3, 0.4), (4, 0.6))}
    rule = dynamics.update_rule(nesterov)

    def update(p, v, g, h):  # noqa: ANN001, ANN202
        new_p, new_state = rule(p, dynamics.MomentumState(v), g, values(h))
        return new_p, new_state.velocity

    new_p, new_v, got_sp, got_sv = advance(nesterov, (at, lr_rows, momentum_rows), (params, velocity),
                                           (s_params, s_velocity), grads, hvps)
    eye = torch.eye(k, dtype=torch.float64)
    for i in range(k):
        pick = {n: t[i] for n, t in s_params.items()}, {n: t[i] for n, t in s_velocity.items()}
        (p_ref, v_ref), (sp_ref, sv_ref) = torch.func.jvp(
            update, (params, velocity, grads, hyper), (*pick, {n: t[i] for n, t in hvps.items()}, eye[i]))
        for n in params:
            assert torch.allclose(new_p[n], p_ref[n], rtol=0, atol=1e-15)
            assert torch.allclose(new_v[n], v_ref[n], rtol=0, atol=1e-15)
            assert torch.allclose(got_sp[n][i], sp_ref[n], rtol=1e-13, atol=1e-14)
            assert torch.allclose(got_sv[n][i], sv_ref[n], rtol=1e-13, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("mode, kwargs", [("forward", {}), ("reverse", {}), ("reverse", {"checkpoint": 7})])
def test_compiled_meta_gradients_equal_the_eager_ones(mlp, mode, kwargs):
    """compile=True (torch.compile of each step) gives eager's meta-gradient and growth rate
    in float64 on the MLP's own minibatches, heavy ball and per-group."""
    args = (mlp.train_loss, mlp.val_loss, mlp.params)
    groups = {name: 0.3 if name.startswith("0") else 0.2 for name in mlp.params}
    for lr in (0.3, groups):
        eager = mt.hypergrad(*args, lr, 0.9, 12, mlp.batches, mode=mode, **kwargs)
        compiled = mt.hypergrad(*args, lr, 0.9, 12, mlp.batches, mode=mode, compile=True, **kwargs)
        for which in ("lr", "momentum"):
            a, b = getattr(eager, which), getattr(compiled, which)
            for key in (a if isinstance(a, dict) else {"": a}):
                x = a[key] if isinstance(a, dict) else a
                y = b[key] if isinstance(b, dict) else b
                assert _relative(y, x) <= 1e-10, (which, key)
        assert compiled.value == pytest.approx(eager.value, rel=1e-12)
        assert compiled.growth_rate == pytest.approx(eager.growth_rate, rel=1e-8, abs=1e-12)


@pytest.mark.slow
def test_compiled_reverse_mode_keeps_no_more_for_its_backward_than_eager():
    """Bytes of the tensors kept for the backward pass (each storage once), counted by
    saved_tensors_hooks, on the bench's narrow MLP (64-128-10, batch 256): the compiled steps
    recompute part of what eager autograd stores, so they keep at most as much (at the
    partitioner's default they kept 30 % more; reverse.ACTIVATION_MEMORY_BUDGET)."""
    from metatune.bench.common import digits_mlp

    _, params, train_loss, val_loss, batches = digits_mlp((128,), 256, 20)

    def kept(compile_: bool) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            mt.hypergrad(train_loss, val_loss, params, 0.05, 0.9, 20, batches, mode="reverse", compile=compile_)
        return sum(storages.values())

    mt.hypergrad(train_loss, val_loss, params, 0.05, 0.9, 2, batches, mode="reverse", compile=True)  # compile
    assert kept(True) <= kept(False)
