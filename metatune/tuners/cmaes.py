"""``cmaes``: Optuna's CMA-ES sampler, one trial at a time."""

from __future__ import annotations

import optuna

from metatune.tuners.optuna_base import OptunaTuner


class CmaEsTuner(OptunaTuner):
    """Optuna's CMA-ES sampler."""

    name = "cmaes"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(seed=seed)
