"""``gp``: Optuna's Gaussian-process (Bayesian optimisation) sampler, one trial at a time."""

from __future__ import annotations

import optuna

from metatune.tuners.optuna_base import OptunaTuner


class GPTuner(OptunaTuner):
    """Optuna's Gaussian-process (Bayesian optimisation) sampler."""

    name = "gp"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed)
