"""Black-box baselines through Optuna's samplers, on the same space, seeds and budget.

Each trial trains T steps at a fixed (η, β) and scores ℓ_val(θ_T). Optuna is told
log ℓ_val (a monotone transform: rank-based samplers are unaffected, and the Gaussian
process sees a loss that spans orders of magnitude on a usable scale); a diverged or
failed trial is told log(DIVERGENCE_FACTOR · ℓ_val(θ₀)), worse than any trial that did not
diverge, so the study never crashes and the sampler learns to avoid the region. Samplers
that do not learn from results sequentially (random) ask for a batch at a time, trained
as one vmapped population. On Ray the same tuner asks its own study
(:mod:`metatune.distributed`), so the sampler and distributions are the same there.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import optuna

from metatune.point import Point
from metatune.tuners.base import DIVERGENCE_FACTOR, Tuner, is_diverged
from metatune.tuners.evaluation import Outcome, Proposal
from metatune.tuners.records import BUDGET_SLACK, ChainStep, LOG_FLOOR


def told_value(value: float, initial_value: float) -> float:
    """What Optuna is told for ℓ_val: log ℓ_val, or log(DIVERGENCE_FACTOR · ℓ_val(θ₀)) when the
    run diverged or failed (NaN)."""
    if math.isnan(value) or is_diverged(value, initial_value):
        return math.log(DIVERGENCE_FACTOR * max(initial_value, LOG_FLOOR))
    return math.log(max(value, LOG_FLOOR))


def quiet_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """A minimising in-memory study, without Optuna's per-trial log lines and experimental warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(direction="minimize", sampler=sampler)


class OptunaTuner(Tuner):
    """Ask/tell over an Optuna study; subclasses choose the sampler (and the batch size)."""

    batch_size: ClassVar[int] = 1

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """"lr" and "momentum", or "lr[<prefix>]" and "momentum[<prefix>]" for each group."""
        space = self.space
        lr = optuna.distributions.FloatDistribution(space.lr_low, space.lr_high, log=space.lr_log)
        momentum = optuna.distributions.FloatDistribution(space.momentum_low, space.momentum_high)
        if not self.groups:
            return {"lr": lr, "momentum": momentum}
        return {**{f"lr[{g}]": lr for g in self.groups}, **{f"momentum[{g}]": momentum for g in self.groups}}

    def point(self, values: dict[str, float]) -> Point:
        """The point of an Optuna trial's params (:meth:`distributions`)."""
        return Point.from_params(values, self.groups)

    def prepare(self) -> float:
        self.study = quiet_study(self.make_sampler())
        self.asked: dict[Point, list[optuna.trial.Trial]] = {}
        return 0.0

    def ask(self, remaining: float) -> Proposal | None:
        n = min(self.batch_size, int((remaining + BUDGET_SLACK) // self.trial_cost()))
        if n < 1:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            asked = [self.study.ask(self.distributions()) for _ in range(n)]
        points = [self.point(t.params) for t in asked]
        for point, trial in zip(points, asked):
            self.asked.setdefault(point, []).append(trial)
        return self.points(points)

    def tell(self, proposal: Proposal, outcomes: list[Outcome]) -> ChainStep | None:
        for outcome in outcomes:
            trial = self.asked[outcome.point].pop(0)
            self.study.tell(trial, told_value(outcome.value, self.initial_value))
        return None
