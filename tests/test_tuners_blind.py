"""No tuner may read what a user's objective would not have: its known optimum or spectrum.

Each method runs twice on the same quadratic, once as built (``optimum`` holds the exact
η*, β*, λ_min, λ_max) and once with ``optimum`` replaced by deliberately wrong numbers; a
method that reads them would propose different points. ``optimum`` is for reports only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from metatune import objectives
from metatune.tuners import METHODS
from metatune.tuning import tune

BUDGET = 1_500
WRONG = {"lr": 0.05, "momentum": 0.1, "spectral_radius": 0.3, "lambda_min": 7.0, "lambda_max": 3.0}


@pytest.fixture(scope="module")
def pair():
    honest = objectives.get("quadratic", dim=10, kappa=100.0, steps=30)
    assert honest.optimum["lambda_max"] == 100.0  # the poisoned copy below differs from it
    return honest, dataclasses.replace(honest, optimum=WRONG)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_results_do_not_depend_on_the_objectives_known_optimum(pair, method):
    honest, poisoned = pair
    a = tune(honest, method, budget=BUDGET, seed=0)
    b = tune(poisoned, method, budget=BUDGET, seed=0)
    assert [(t.lr, t.momentum, t.value) for t in a.trials] == [(t.lr, t.momentum, t.value) for t in b.trials]
    assert [t.spectral_radius for t in a.trials] == [t.spectral_radius for t in b.trials]


def test_metagrad_curvature_is_estimated_and_charged(pair):
    """λ_max from Lanczos matches numpy's eigenvalues of the explicit Hessian; its HVPs are
    charged before the first trial."""
    honest, _ = pair
    matrix = _hessian(honest)
    exact = np.linalg.eigvalsh(matrix)
    result = tune(honest, "metagrad", budget=BUDGET, seed=0)
    first = result.trials[0]
    assert first.lambda_max == pytest.approx(exact[-1], rel=1e-6)
    assert first.cumulative_evals > first.gradient_evals  # the estimate was spent before it


def _hessian(objective) -> np.ndarray:
    import torch

    params = objective.init_params(0)
    flat = params["x"]
    return torch.autograd.functional.hessian(lambda x: objective.train_loss({"x": x}, None), flat).numpy()

