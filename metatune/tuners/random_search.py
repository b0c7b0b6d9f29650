"""``random``: uniform samples of the space (η log-uniform), trained as vmapped populations."""

from __future__ import annotations

import optuna

from metatune.tuners.optuna_base import OptunaTuner


class RandomTuner(OptunaTuner):
    """Optuna's RandomSampler; batches of 64 points are trained at once."""

    name = "random"
    batch_size = 64

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)
