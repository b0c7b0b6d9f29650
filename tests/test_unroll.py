"""metatune.unroll against torch.optim.SGD, step for step, and its input checks."""

from __future__ import annotations

import math

import pytest
import torch

import metatune as mt


def _sgd_reference(problem, param_groups, steps, nesterov):
    """Train problem.model with torch.optim.SGD; return the parameters after every step."""
    model = problem.model
    model.load_state_dict({k: v.clone() for k, v in problem.params.items()}, strict=False)
    named = dict(model.named_parameters())
    groups = [{"params": [named[n] for n in names], "lr": lr, "momentum": m} for names, lr, m in param_groups]
    optimizer = torch.optim.SGD(groups, lr=param_groups[0][1], momentum=param_groups[0][2], nesterov=nesterov)
    trajectory = []
    for batch in problem.batches[:steps]:
        optimizer.zero_grad()
        problem.train_loss(named, batch).backward()
        optimizer.step()
        trajectory.append({k: v.detach().clone() for k, v in named.items()})
    return trajectory


def _relative_error(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


@pytest.mark.parametrize("nesterov", [False, True])
def test_unroll_matches_torch_sgd_step_for_step(mlp, nesterov):
    reference = _sgd_reference(mlp, [(list(mlp.params), 0.3, 0.9)], 12, nesterov)
    for t in (1, 5, 12):
        run = mt.unroll(mlp.train_loss, mlp.params, lr=0.3, momentum=0.9, steps=t, batches=mlp.batches, nesterov=nesterov)
        assert _relative_error(run.params, reference[t - 1]) <= 1e-10


@pytest.mark.parametrize("nesterov", [False, True])
def test_per_group_hyperparameters_match_sgd_param_groups(mlp, nesterov):
    first = [n for n in mlp.params if n.startswith("0.")]
    second = [n for n in mlp.params if n.startswith("2.")]
    reference = _sgd_reference(mlp, [(first, 0.2, 0.8), (second, 0.05, 0.5)], 10, nesterov)
    run = mt.unroll(
        mlp.train_loss, mlp.params, lr={"0": 0.2, "2": 0.05}, momentum={"0": 0.8, "2": 0.5},
        steps=10, batches=mlp.batches, nesterov=nesterov,
    )
    assert _relative_error(run.params, reference[-1]) <= 1e-10
    single = mt.unroll(mlp.train_loss, mlp.params, lr=0.2, momentum=0.8, steps=10, batches=mlp.batches, nesterov=nesterov)
    assert _relative_error(single.params, reference[-1]) > 1e-3  # the groups really differ


def test_losses_are_the_training_loss_before_each_step(mlp):
    run = mt.unroll(mlp.train_loss, mlp.params, lr=0.1, momentum=0.5, steps=3, batches=mlp.batches)
    assert run.losses.shape == (3,)
    assert math.isclose(float(run.losses[0]), float(mlp.train_loss(mlp.params, mlp.batches[0])), rel_tol=1e-12)


def test_resuming_with_velocity_equals_one_long_run(mlp):
    whole = mt.unroll(mlp.train_loss, mlp.params, 0.1, 0.9, 8, mlp.batches)
    first = mt.unroll(mlp.train_loss, mlp.params, 0.1, 0.9, 3, mlp.batches)
    second = mt.unroll(mlp.train_loss, first.params, 0.1, 0.9, 5, mlp.batches[3:], velocity=first.velocity)
    assert _relative_error(second.params, whole.params) <= 1e-12


def test_inputs_are_not_modified(mlp):
    before = {k: v.clone() for k, v in mlp.params.items()}
    mt.unroll(mlp.train_loss, mlp.params, 0.1, 0.9, 3, mlp.batches)
    assert all(torch.equal(before[k], mlp.params[k]) for k in before)


def test_divergence_is_returned_not_raised(quadratic):
    run = mt.unroll(quadratic.train_loss, quadratic.params, lr=50.0, momentum=0.9, steps=40, batches=quadratic.batches)
    assert not bool(torch.isfinite(run.params["x"]).all()) or float(run.params["x"].abs().max()) > 1e10


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -0.1}, "lr=-0.1"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"momentum": -0.1}, "momentum=-0.1"),
        ({"steps": 0}, "steps=0"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"steps": 31}, "batches="),
        ({"lr": {"0": 0.1}}, "uncovered"),
        ({"lr": {"0": 0.1, "2": 0.1, "9": 0.1}}, "unused"),
        ({"momentum": {"0": 0.5, "2": 1.5}}, "momentum['2']=1.5"),
        ({"nesterov": "yes"}, "nesterov="),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(mlp, kwargs, named):
    args = dict(lr=0.1, momentum=0.9, steps=5, batches=mlp.batches, nesterov=False) | kwargs
    with pytest.raises(ValueError, match="is invalid: expected") as info:
        mt.unroll(mlp.train_loss, mlp.params, **args)
    assert named in str(info.value)


def test_non_scalar_loss_and_non_finite_params_are_refused(mlp):
    with pytest.raises(ValueError, match=r"train_loss\(params, batch\)=\(24,\)"):
        mt.unroll(lambda p, b: torch.func.functional_call(mlp.model, p, (torch.ones(24, 6, dtype=torch.float64),))[:, 0],
                  mlp.params, 0.1, 0.9, 2, mlp.batches)
    bad = dict(mlp.params, **{"0.bias": torch.full((10,), float("nan"), dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"params\['0.bias'\]"):
        mt.unroll(mlp.train_loss, bad, 0.1, 0.9, 2, mlp.batches)
