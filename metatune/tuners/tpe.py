"""``tpe``: Optuna's tree-structured Parzen estimator (multivariate), one trial at a time."""

from __future__ import annotations

import optuna

from metatune.tuners.optuna_base import OptunaTuner


class TPETuner(OptunaTuner):
    """Optuna's tree-structured Parzen estimator (multivariate)."""

    name = "tpe"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
