"""Black-box baselines through Optuna's samplers, on the same space, seeds and budget.

Each trial trains T steps at a fixed (η, β), or a fixed schedule of them (K knots, or the
warm-up + cosine family's peak η, β, warm-up and final fractions), and scores ℓ_val(θ_T). Optuna is told
log ℓ_val (a monotone transform: rank-based samplers are unaffected, and the Gaussian
process sees a loss that spans orders of magnitude on a usable scale); a diverged or
failed trial is told log(DIVERGENCE_FACTOR · ℓ_val(θ₀)), worse than any trial that did not
diverge, so the study never crashes and the sampler learns to avoid the region. Samplers
that do not learn from results sequentially (random) ask for a batch at a time, trained
as one vmapped population. On Ray the same tuner asks its own study
(:mod:`metatune.distributed`), so the sampler and distributions are the same there.

A resumed job replays its recorded trials by asking again (the sampler's random state then
follows the interrupted run's); recorded trials that the asks do not reproduce are added to
the study as finished trials (:meth:`OptunaTuner.observe`) and the sampler is seeded afresh
from (seed, trials in the study) (:func:`resumed_seed`), so that it does not draw again the
sequence a sampler of the job's seed drew before.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
import optuna

from metatune.point import Point, slot_names
from metatune.schedule import FINAL_RANGE, WARMUP_COSINE, WARMUP_RANGE
from metatune.tuners.base import DIVERGENCE_FACTOR, Tuner, is_diverged
from metatune.tuners.evaluation import Outcome, Proposal
from metatune.tuners.records import BUDGET_SLACK, ChainStep, LOG_FLOOR


def told_value(value: float, initial_value: float) -> float:
    """What Optuna is told for ℓ_val: log ℓ_val, or log(DIVERGENCE_FACTOR · ℓ_val(θ₀)) when the
    run diverged or failed (NaN)."""
    if math.isnan(value) or is_diverged(value, initial_value):
        return math.log(DIVERGENCE_FACTOR * max(initial_value, LOG_FLOOR))
    return math.log(max(value, LOG_FLOOR))


def resumed_seed(seed: int, told: int) -> int:
    """The seed of a sampler that goes on after ``told`` trials of a job of ``seed``: a 32-bit
    word of numpy's SeedSequence of (seed, told), so that every (seed, told) gets its own
    stream, none of them the stream of ``seed`` itself.

    Example:
        >>> resumed_seed(0, 7) == resumed_seed(0, 7) != resumed_seed(0, 8)
        True
    """
    return int(np.random.SeedSequence([seed, told]).generate_state(1)[0])


def quiet_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """A minimising in-memory study, without Optuna's per-trial log lines and experimental warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(direction="minimize", sampler=sampler)


class OptunaTuner(Tuner):
    """Ask/tell over an Optuna study; subclasses choose the sampler (and the batch size)."""

    batch_size: ClassVar[int] = 1

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The method's sampler, seeded with ``seed``."""
        raise NotImplementedError

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """One distribution per flat name of a point (:func:`~metatune.point.slot_names`):
        "lr" and "momentum", per group "lr[<prefix>]", …, per knot "lr@<k>", …, each in the
        space's bounds; the warm-up + cosine family adds "warmup" (uniform in
        :data:`~metatune.schedule.WARMUP_RANGE`) and "final" (log-uniform in
        :data:`~metatune.schedule.FINAL_RANGE`)."""
        space = self.space
        lr = optuna.distributions.FloatDistribution(space.lr_low, space.lr_high, log=space.lr_log)
        momentum = optuna.distributions.FloatDistribution(space.momentum_low, space.momentum_high)
        knots = self.schedule.knots
        out: dict[str, optuna.distributions.BaseDistribution] = {
            **dict.fromkeys(slot_names("lr", self.groups, knots), lr),
            **dict.fromkeys(slot_names("momentum", self.groups, knots), momentum)}
        if self.schedule.shape == WARMUP_COSINE:
            out["warmup"] = optuna.distributions.FloatDistribution(*WARMUP_RANGE)
            out["final"] = optuna.distributions.FloatDistribution(*FINAL_RANGE, log=True)
        return out

    def point(self, values: dict[str, float]) -> Point:
        """The point of an Optuna trial's params (:meth:`distributions`)."""
        return Point.from_params(values, self.groups, self.schedule)

    def prepare(self) -> float:
        self.study = quiet_study(self.make_sampler(self.seed))
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

    def observe(self, outcomes: list[Outcome]) -> None:
        """Add each outcome to the study as a finished trial (its point's params, its told
        value), then seed the sampler from (seed, trials in the study) (:func:`resumed_seed`)."""
        distributions = self.distributions()
        for outcome in outcomes:
            params = outcome.point.to_params()
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions={name: distributions[name] for name in params},
                value=told_value(outcome.value, self.initial_value)))
        self.study.sampler = self.make_sampler(resumed_seed(self.seed, len(self.study.trials)))
