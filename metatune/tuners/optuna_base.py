"""Black-box baselines through Optuna's samplers, on the same space, seeds and budget.

Each trial trains T steps at a fixed (η, β) and scores ℓ_val(θ_T). Optuna is told
log ℓ_val (a monotone transform: rank-based samplers are unaffected, and the Gaussian
process sees a loss that spans orders of magnitude on a usable scale); a diverged trial
is told log(DIVERGENCE_FACTOR · ℓ_val(θ₀)), worse than any trial that did not diverge, so
the study never crashes and the sampler learns to avoid the region. Samplers that do not
learn from results sequentially (random, grid) ask for a batch at a time and train it as
one vmapped population.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import optuna

from metatune.tuners.base import DIVERGENCE_FACTOR, BudgetExhausted, Trial, Tuner


class OptunaTuner(Tuner):
    """Ask/tell over an Optuna study; subclasses choose the sampler (and the batch size)."""

    batch_size: ClassVar[int] = 1

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        space = self.space
        return {
            "lr": optuna.distributions.FloatDistribution(space.lr_low, space.lr_high, log=space.lr_log),
            "momentum": optuna.distributions.FloatDistribution(space.momentum_low, space.momentum_high),
        }

    def search(self) -> None:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study = optuna.create_study(direction="minimize", sampler=self.make_sampler())
                self._ask_and_tell(study)
        finally:
            optuna.logging.set_verbosity(verbosity)

    def max_trials(self) -> int | None:
        """A cap on the number of trials (the grid's size), or None."""
        return None

    def _ask_and_tell(self, study: optuna.Study) -> None:
        distributions = self.distributions()
        while True:
            n = min(self.batch_size, int(self.remaining() // self.trial_cost()))
            cap = self.max_trials()
            if cap is not None:
                n = min(n, cap - len(self.trials))
            if n < 1:
                raise BudgetExhausted
            asked = [study.ask(distributions) for _ in range(n)]
            points = [(t.params["lr"], t.params["momentum"]) for t in asked]
            for optuna_trial, trial in zip(asked, self.evaluate_batch(points)):
                study.tell(optuna_trial, self.told_value(trial))

    def evaluate_batch(self, points: list[tuple[float, float]]) -> list[Trial]:
        """Evaluate fixed (η, β) points: one at a time, or as one vmapped population."""
        if len(points) == 1:
            return [self.evaluate(*points[0])]
        return self.evaluate_population(points)

    def told_value(self, trial: Trial) -> float:
        if trial.diverged:
            return math.log(DIVERGENCE_FACTOR * max(self.initial_value, 1e-300))
        return math.log(max(trial.value, 1e-300))
