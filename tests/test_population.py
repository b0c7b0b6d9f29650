"""metatune.population against K independent torch.optim.SGD runs and metatune.unroll, and its checks."""

from __future__ import annotations

import math

import pytest
import torch

import metatune as mt
from metatune.population import train_population

STEPS = 20
LRS = [0.05, 0.3, 1e9, 0.1, 0.02]  # member 2 diverges to NaN within STEPS
MOMENTA = [0.2, 0.9, 0.9, 0.5, 0.99]  # > 0: torch.optim.SGD refuses Nesterov with β = 0
DIVERGING = 2


def _regression_problem():
    """A 5-8-2 tanh MLP on a float64 regression set: squared error makes a large step blow up."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    x_val = torch.randn(32, 5, generator=generator, dtype=torch.float64)
    y_val = torch.randn(32, 2, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [torch.randperm(64, generator=generator)[:16] for _ in range(STEPS)]

    def train_loss(p, b):
        return ((torch.func.functional_call(model, p, (x[b],)) - y[b]) ** 2).mean()

    def val_loss(p):
        return ((torch.func.functional_call(model, p, (x_val,)) - y_val) ** 2).mean()

    return model, params, train_loss, val_loss, batches


@pytest.fixture(scope="module")
def regression():
    return _regression_problem()


def _sgd_run(problem, lr, momentum, nesterov):
    """One ordinary training run: θ_T, ℓ_val(θ_T) and the last step's training loss."""
    model, params, train_loss, val_loss, batches = problem
    model.load_state_dict({k: v.clone() for k, v in params.items()}, strict=False)
    named = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov)
    for batch in batches:
        optimizer.zero_grad()
        loss = train_loss(named, batch)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {k: v.detach().clone() for k, v in named.items()}, float(val_loss(named)), float(loss)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("nesterov", [False, True])
def test_population_equals_independent_torch_sgd_runs(regression, nesterov):
    _, params, train_loss, val_loss, batches = regression
    pop = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches, nesterov, return_params=True)
    assert pop.diverged.tolist() == [k == DIVERGING for k in range(len(LRS))]
    for k, (lr, momentum) in enumerate(zip(LRS, MOMENTA)):
        final, value, last_loss = _sgd_run(regression, lr, momentum, nesterov)
        if k == DIVERGING:
            assert not math.isfinite(value) and not bool(torch.isfinite(pop.values[k]))
            continue
        for name in final:
            assert _relative(pop.params[name][k], final[name]) <= 1e-10, (k, name)
        assert math.isclose(float(pop.values[k]), value, rel_tol=1e-10)
        assert math.isclose(float(pop.final_train_loss[k]), last_loss, rel_tol=1e-10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_each_member_equals_unroll(mlp, nesterov):
    lrs, momenta = torch.tensor([0.1, 0.5, 0.3]), torch.tensor([0.9, 0.0, 0.6])
    pop = train_population(mlp.train_loss, mlp.val_loss, mlp.params, lrs, momenta, 15, mlp.batches, nesterov,
                           return_params=True)
    for k in range(3):
        run = mt.unroll(mlp.train_loss, mlp.params, float(lrs[k]), float(momenta[k]), 15, mlp.batches, nesterov)
        assert all(_relative(pop.params[n][k], run.params[n]) <= 1e-10 for n in run.params)
        assert _relative(pop.train_losses[k], run.losses) <= 1e-10
        assert math.isclose(float(pop.values[k]), float(mlp.val_loss(run.params)), rel_tol=1e-10)
    assert pop.gradient_evals == 3 * (15 + 1) and not bool(pop.diverged.any())


def test_chunks_and_population_size_do_not_change_a_member(regression):
    _, params, train_loss, val_loss, batches = regression
    whole = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches)
    chunked = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches, chunk_size=2)
    alone = train_population(train_loss, val_loss, params, LRS[:1], MOMENTA[:1], STEPS, batches)
    keep = ~whole.diverged
    assert torch.allclose(chunked.values[keep], whole.values[keep], rtol=1e-12, atol=0)
    assert torch.equal(chunked.diverged, whole.diverged)
    assert math.isclose(float(alone.values[0]), float(whole.values[0]), rel_tol=1e-12)
    assert whole.params is None and whole.train_losses.shape == (len(LRS), STEPS)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's imports
def test_compiled_step_equals_eager(regression):
    _, params, train_loss, val_loss, batches = regression
    eager = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches, nesterov=True)
    compiled = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches, nesterov=True,
                                compile=True)
    keep = ~eager.diverged
    assert torch.equal(compiled.diverged, eager.diverged) and int(keep.sum()) == len(LRS) - 1
    assert torch.allclose(compiled.values[keep], eager.values[keep], rtol=1e-10, atol=0)
    assert torch.allclose(compiled.train_losses[keep], eager.train_losses[keep], rtol=1e-10, atol=0)


def test_best_index_skips_diverged_members(regression):
    _, params, train_loss, val_loss, batches = regression
    pop = train_population(train_loss, val_loss, params, LRS, MOMENTA, STEPS, batches)
    finite = [k for k in range(len(LRS)) if k != DIVERGING]
    assert pop.best_index == min(finite, key=lambda k: float(pop.values[k]))
    lost = train_population(train_loss, val_loss, params, [1e9], [0.9], STEPS, batches)
    assert lost.best_index is None and bool(lost.diverged[0])


def test_settings_follow_params_dtype_and_are_returned(mlp):
    params32 = {k: v.float() for k, v in mlp.params.items()}

    def loss32(p, b=None):
        return sum((v**2).sum() for v in p.values())

    pop = train_population(loss32, loss32, params32, (0.1, 0.2), torch.tensor([0.5, 0.0]), 3)
    assert pop.values.dtype == torch.float32 and pop.lrs.dtype == torch.float32
    assert pop.lrs.tolist() == pytest.approx([0.1, 0.2]) and pop.momenta.tolist() == [0.5, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"lrs": [0.1, -0.2]}, "lrs[1]=-0.2"),
        ({"lrs": [0.1, 0.0]}, "lrs[1]=0.0"),
        ({"lrs": [float("inf"), 0.1]}, "lrs[0]=inf"),
        ({"momenta": [0.5, 1.0]}, "momenta[1]=1.0"),
        ({"momenta": [-0.1, 0.5]}, "momenta[0]=-0.1"),
        ({"momenta": [0.5]}, "momenta='1 values'"),
        ({"lrs": [], "momenta": []}, "lrs="),
        ({"lrs": torch.ones(2, 2)}, "lrs="),
        ({"lrs": "0.1"}, "lrs="),
        ({"lrs": [True, False]}, "lrs="),
        ({"steps": 0}, "steps=0"),
        ({"steps": 31}, "batches="),
        ({"nesterov": 1}, "nesterov=1"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"compile": "fast"}, "compile='fast'"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(mlp, kwargs, named):
    args = {"lrs": [0.1, 0.2], "momenta": [0.5, 0.9], "steps": 3, "batches": mlp.batches} | kwargs
    with pytest.raises(ValueError, match="is invalid: expected") as info:
        train_population(mlp.train_loss, mlp.val_loss, mlp.params, **args)
    assert named in str(info.value)


def test_non_scalar_losses_are_refused(mlp):
    with pytest.raises(ValueError, match=r"val_loss\(params\)=\(40,\)"):
        train_population(mlp.train_loss, lambda p: torch.zeros(40), mlp.params, [0.1], [0.5], 2, mlp.batches)
    with pytest.raises(ValueError, match=r"train_loss\(params, batch\)"):
        train_population(lambda p, b: p["0.bias"], mlp.val_loss, mlp.params, [0.1], [0.5], 2, mlp.batches)
