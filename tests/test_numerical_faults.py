"""Numerical faults inside trials: learning rates past the critical bound and momentum up to
0.999 on a quadratic whose runs overflow. Each such trial is recorded diverged with its ρ
(checked against numpy's eigenvalues of the heavy-ball transition matrix), and every method
still ends with a finite, stable best point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metatune import objectives
from metatune.tuning import tune

METHODS = ["tpe", "random", "cmaes", "gp", "grid", "metagrad"]


def heavy_ball_radius(lr: float, momentum: float, curvature: float) -> float:
    """ρ of [[1 + β − ηλ, −β], [1, 0]], the transition of heavy ball on curvature λ."""
    transition = np.array([[1.0 + momentum - lr * curvature, -momentum], [1.0, 0.0]])
    return float(np.max(np.abs(np.linalg.eigvals(transition))))


@pytest.mark.parametrize("method", METHODS)
def test_runs_that_overflow_are_recorded_diverged_with_rho_and_the_best_is_stable(method):
    steep = objectives.get("quadratic", dim=10, kappa=100.0, steps=100)  # λ_max = 100
    space = objectives.SearchSpace(lr_low=1e-4, lr_high=10.0, momentum_low=0.0, momentum_high=0.999)
    result = tune(steep, method, budget=101 * 30, seed=0, space=space)
    diverged = [t for t in result.trials if t.diverged]
    assert diverged or method == "metagrad"  # metagrad's guard keeps its chains under the critical lr
    for trial in diverged:
        assert trial.status == "diverged" and trial.value == math.inf and not trial.stable
    for trial in result.trials:  # ρ over both ends of the spectrum (κ = 100), by numpy's eigenvalues
        ends = (trial.lambda_max, trial.lambda_max / 100.0)
        assert trial.spectral_radius == pytest.approx(max(heavy_ball_radius(trial.lr, trial.momentum, lam)
                                                          for lam in ends), rel=1e-3)
    past = [t for t in result.trials if t.lr > 2 * (1 + t.momentum) / t.lambda_max * 1.01]
    assert all(t.spectral_radius > 1 for t in past)
    best = result.best
    assert best is not None and math.isfinite(best.value) and best.status == "completed"
    assert best.value < 1e-2 * float(steep.val_loss(steep.init_params(0)))
