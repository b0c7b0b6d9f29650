"""Objectives: the shared contract of every registered problem, the registry, and the quadratic's optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import metatune as mt
from metatune import objectives
from metatune.objectives import base

BUILT_INS = {"quadratic", "rosenbrock", "logistic-digits", "mlp-digits", "cnn-digits", "rnn-sequence", "mlp-regression",
             "autoencoder-digits"}

SMALL = {"cnn-digits": {"width": 4, "batch_size": 32}, "quadratic": {"dim": 10}}
"""Overrides that keep the float64 meta-gradient check fast; the losses are the same code."""


def _lower_lr(space: objectives.SearchSpace) -> float:
    """A learning rate a third of the way up the (log) range: safely stable, yet not idle."""
    return space.lr_low ** (2 / 3) * space.lr_high ** (1 / 3)


def _batch_list(objective: objectives.Objective, steps: int) -> list:
    batches = objective.batches(0, steps)
    return [None] * steps if batches is None else list(batches[:steps])


def _mean_loss(objective: objectives.Objective, params: dict, batches: list) -> float:
    return sum(float(objective.train_loss(params, b)) for b in batches) / len(batches)


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("name", objectives.names())
def test_objective_contract(name: str) -> None:
    objective = objectives.get(name)
    assert objective.name == name and objective.description
    assert (objective.optimum is not None) == (name == "quadratic")  # only the quadratic's optimum is known
    shown = {k: v for k, v in objectives.parameters(name).items() if k not in ("dtype", "device")}
    assert objective.params == shown
    first, again, other = objective.init_params(0), objective.init_params(0), objective.init_params(1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    assert all(not p.requires_grad and p.device.type == "cpu" for p in first.values())

    batch = _batch_list(objective, 3)[0]
    train, val = objective.train_loss(first, batch), objective.val_loss(first)
    for loss in (train, val):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and bool(torch.isfinite(loss))

    batches = objective.batches(0, objective.steps)
    if batches is not None:
        assert len(batches) >= objective.steps
        assert all(torch.equal(a, b) for a, b in zip(batches, objective.batches(0, objective.steps)))
        assert any(not torch.equal(a, b) for a, b in zip(batches, objective.batches(1, objective.steps)))

    steps = 20
    trained = _batch_list(objective, steps)
    run = mt.unroll(objective.train_loss, first, _lower_lr(objective.space), 0.5, steps, objective.batches(0, steps))
    assert _mean_loss(objective, run.params, trained) < 0.95 * _mean_loss(objective, first, trained)


@pytest.mark.parametrize("name", objectives.names())
def test_forward_and_reverse_meta_gradients_agree(name: str) -> None:
    objective = objectives.get(name, dtype="float64", **SMALL.get(name, {}))
    params = objective.init_params(0)
    assert all(p.dtype == torch.float64 for p in params.values())
    space = objective.space
    lr = math.sqrt(space.lr_low * _lower_lr(space))
    args = (objective.train_loss, objective.val_loss, params, lr, 0.5, 5, objective.batches(0, 5))
    forward, reverse = mt.hypergrad(*args, mode="forward"), mt.hypergrad(*args, mode="reverse")
    assert not forward.diverged and not reverse.diverged
    assert _close(forward.value, reverse.value, 1e-12)
    assert _close(forward.lr, reverse.lr, 1e-6) and _close(forward.momentum, reverse.momentum, 1e-6)
    assert forward.lr != 0.0


def test_the_autoencoder_reconstructs_the_held_out_images() -> None:
    """autoencoder-digits' validation loss is F.mse_loss of an independently built 64-32-8-32-64
    tanh network (its weights loaded from θ₀) against its own held-out inputs; a training
    batch's loss is the same on those rows."""
    from torch import nn

    from metatune.datasets import digits

    objective = objectives.get("autoencoder-digits")
    params = objective.init_params(3)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 32), nn.Tanh(),
                          nn.Linear(32, 64))
    model.load_state_dict(params)
    images = digits(seed=0)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(images.x_val), images.x_val)
        batch = objective.batches(0, 1)[0]
        expected_train = torch.nn.functional.mse_loss(model(images.x_train[batch]), images.x_train[batch])
    assert float(objective.val_loss(params)) == pytest.approx(float(expected), rel=1e-6)
    assert float(objective.train_loss(params, batch)) == pytest.approx(float(expected_train), rel=1e-6)
    assert sorted({n.split(".")[0] for n in params}) == ["0", "2", "4", "6"]  # four layers: 8 per-layer hyperparameters


def test_unknown_name_lists_the_registered_names() -> None:
    with pytest.raises(ValueError, match="no-such-problem") as error:
        objectives.get("no-such-problem")
    assert all(name in str(error.value) for name in BUILT_INS)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ValueError, match="bogus_knob"):
        objectives.get("mlp-digits", bogus_knob=3)


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [("rosenbrock", {"dim": 1}, "dim"), ("mlp-digits", {"batch_size": 0}, "batch_size"),
     ("rnn-sequence", {"length": 1}, "length"), ("cnn-digits", {"dtype": "float16"}, "dtype"),
     ("logistic-digits", {"weight_decay": -1.0}, "weight_decay")],
)
def test_invalid_parameter_values_raise(name: str, params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        objectives.get(name, **params)


def test_names_and_describe_cover_the_built_ins() -> None:
    assert BUILT_INS <= set(objectives.names())
    rows = {row["name"]: row for row in objectives.describe()}
    assert BUILT_INS <= set(rows)
    for row in rows.values():
        assert row["description"] and isinstance(row["parameters"], dict)
        assert "dtype" not in row["parameters"] and "steps" in row["parameters"]
    assert rows["rosenbrock"]["parameters"]["b"] == 100.0
    assert rows["logistic-digits"]["space"]["lr_high"] == 10.0


def test_weight_decay_enters_the_training_loss_only() -> None:
    plain, decayed = (objectives.get("logistic-digits", weight_decay=wd, dtype="float64") for wd in (0.0, 0.1))
    params, batch = plain.init_params(0), plain.batches(0, 1)[0]
    penalty = 0.5 * 0.1 * float((params["weight"] ** 2).sum())
    assert math.isclose(float(decayed.train_loss(params, batch)), float(plain.train_loss(params, batch)) + penalty)
    assert float(decayed.val_loss(params)) == float(plain.val_loss(params))


def test_rosenbrock_is_zero_only_at_its_minimum() -> None:
    objective = objectives.get("rosenbrock", dim=4)
    ones = torch.ones(4, dtype=torch.float64)
    assert float(objective.train_loss({"x": ones}, None)) == 0.0
    classic = objectives.get("rosenbrock", jitter=0.0).init_params(0)["x"]
    assert classic.tolist() == [-1.2, 1.0]
    assert math.isclose(float(objectives.get("rosenbrock").train_loss({"x": classic}, None)), 24.2)


def test_quadratic_optimum_matches_a_brute_force_grid() -> None:
    kappa = 100.0
    objective = objectives.get("quadratic", dim=6, kappa=kappa)
    x0 = objective.init_params(0)["x"]
    hessian = torch.autograd.functional.hessian(lambda x: objective.train_loss({"x": x}, None), x0)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    assert float(off_diagonal.abs().max()) > 1.0  # rotated: the coordinates are coupled
    optimum = objective.optimum
    assert math.isclose(optimum["lambda_max"], float(eigenvalues.max()), rel_tol=1e-10)
    assert math.isclose(optimum["lambda_min"], float(eigenvalues.min()), rel_tol=1e-10)

    lrs = np.geomspace(optimum["lr"] / 3, optimum["lr"] * 3, 301)
    momenta = np.linspace(0.0, 0.99, 397)
    rho = mt.stability.spectral_radius(lrs[:, None], momenta[None, :], eigenvalues.numpy())
    i, j = np.unravel_index(np.argmin(rho), rho.shape)
    assert rho.min() >= optimum["spectral_radius"] - 1e-9  # nothing on the grid beats the optimum
    assert rho.min() <= optimum["spectral_radius"] + 5e-3
    assert math.isclose(lrs[i], optimum["lr"], rel_tol=0.03)
    assert abs(momenta[j] - optimum["momentum"]) < 0.01
    at_optimum = mt.stability.spectral_radius(optimum["lr"], optimum["momentum"], eigenvalues.numpy())
    assert math.isclose(at_optimum, optimum["spectral_radius"], rel_tol=1e-6)  # a double root: ~√ε


def _toy_factory(*, scale: float = 2.0, steps: int = 7, dtype: str = "float64", device: str = "cpu"):
    def loss(params: dict, batch: None = None) -> torch.Tensor:
        return scale * (params["x"] ** 2).sum()

    return objectives.Objective(
        name="toy", description=f"toy bowl, scale {scale:g}", init_params=lambda seed: {"x": torch.ones(2) * seed},
        train_loss=loss, val_loss=loss, batches=lambda seed, steps: None, steps=steps,
        params={"scale": scale, "steps": steps},
    )


def test_decorator_registration_is_listed_and_built() -> None:
    try:
        objectives.register("toy-problem")(_toy_factory)
        assert "toy-problem" in objectives.names()
        built = objectives.get("toy-problem", scale=3.0)
        assert built.params["scale"] == 3.0 and float(built.train_loss({"x": torch.ones(2)}, None)) == 6.0
        assert any(row["name"] == "toy-problem" for row in objectives.describe())
    finally:
        base._FACTORIES.pop("toy-problem", None)
    assert "toy-problem" not in objectives.names()


class _FakeEntryPoint:
    name = "ep-problem"

    def load(self) -> object:
        return _toy_factory


def test_entry_point_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = []

    def fake_entry_points(*, group: str) -> list[_FakeEntryPoint]:
        groups.append(group)
        return [_FakeEntryPoint()]

    monkeypatch.setattr(base, "entry_points", fake_entry_points)
    try:
        assert objectives.load_entry_points() == ["ep-problem"]
        built = objectives.get("ep-problem", scale=5.0)
        assert groups == [objectives.ENTRY_POINT_GROUP]
        assert built.params == {"scale": 5.0, "steps": 7}
        assert "ep-problem" in objectives.names()
    finally:
        objectives.unregister("ep-problem")
    assert "ep-problem" not in objectives.names()


def test_rnn_sensitivities_explode_at_a_large_learning_rate() -> None:
    objective = objectives.get("rnn-sequence", dtype="float64")
    params, steps = objective.init_params(0), 20
    batches = objective.batches(0, steps)

    def growth(lr: float) -> float:
        hg = mt.hypergrad(objective.train_loss, objective.val_loss, params, lr, 0.5, steps, batches, mode="forward")
        return hg.growth_rate

    small, large = growth(objective.space.lr_low), growth(objective.space.lr_high)
    assert abs(small) < 0.5
    assert large > small + 1.0


def test_digits_features_are_on_one_scale_in_both_splits():
    """A pixel constant in training must not be divided by ~0 (its rare validation values explode)."""
    from metatune import datasets

    split = datasets.digits(seed=0, dtype=torch.float64)
    assert float(split.x_train.abs().max()) < 5 and float(split.x_val.abs().max()) < 5
    objective = objectives.get("logistic-digits", dtype="float64")
    params = objective.init_params(0)
    assert float(objective.val_loss(params)) < 3 * float(objective.train_loss(params, objective.batches(0, 1)[0]))


@pytest.mark.parametrize(("spectrum", "expected"), [("log", np.logspace(0, 2, 12)), ("linear", np.linspace(1, 100, 12))])
def test_quadratic_spectrum_is_the_one_asked_for(spectrum: str, expected: np.ndarray) -> None:
    objective = objectives.get("quadratic", dim=12, kappa=100.0, spectrum=spectrum)
    x = objective.init_params(0)["x"]
    hessian = torch.autograd.functional.hessian(lambda v: objective.train_loss({"x": v}, None), x)
    assert np.allclose(np.linalg.eigvalsh(hessian.numpy()), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="spectrum"):
        objectives.get("quadratic", spectrum="flat")


def test_regression_data_follow_the_stated_function_and_noise() -> None:
    from metatune.objectives.regression import regression_split, target_function

    x = torch.tensor([[0.5, 1.0, 2.0, 1.0, 0.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    assert float(target_function(x)) == pytest.approx(math.sin(1.0) + 2.0 + 0.5 - 1.0, rel=1e-12)
    split = regression_split(n_train=4000, n_val=1000, noise=0.1, seed=0, dtype=torch.float64, device="cpu")
    residual = torch.cat([split.y_train - target_function(split.x_train), split.y_val - target_function(split.x_val)])
    assert abs(float(residual.std()) - 0.1) < 0.005 and abs(float(residual.mean())) < 0.005
