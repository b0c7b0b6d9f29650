"""Tuning methods behind one interface, and the in-process run of a :class:`~metatune.job.TuningJob`.

``METHODS`` maps each method's name to its :class:`Tuner`; :func:`build_tuner` makes the
tuner of a job and :func:`run` runs it here. ``mt.tune`` (:mod:`metatune.tuning`) chooses
between this and :func:`metatune.distributed.run` by the job's backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from metatune import checks
from metatune._types import Params
from metatune.job import TuningJob
from metatune.objectives import Objective
from metatune.tuners.base import Callback, Trial, Tuner, TuneResult
from metatune.tuners.cmaes import CmaEsTuner
from metatune.tuners.gp import GPTuner
from metatune.tuners.grid import GridTuner
from metatune.tuners.metagrad import MetagradTuner
from metatune.tuners.online import OnlineTuner
from metatune.tuners.random_search import RandomTuner
from metatune.tuners.records import ChainStep, TrialStatus
from metatune.tuners.tpe import TPETuner

METHODS: dict[str, type[Tuner]] = {
    tuner.name: tuner for tuner in (MetagradTuner, OnlineTuner, TPETuner, RandomTuner, GridTuner, CmaEsTuner, GPTuner)
}

JOB_FIELDS = ("objective", "budget", "seed", "callback", "space", "steps", "groups", "schedule", "curvature")
"""A tuner's constructor arguments that are not the method's own options: what a
:class:`~metatune.job.TuningJob` sets itself, and a known curvature (Python callers only)."""


def tuner_class(method: str) -> type[Tuner]:
    """The tuner of ``method`` (a ValueError listing the methods for an unknown name)."""
    return METHODS[checks.choice("method", method, sorted(METHODS))]


def accepted_options(method: str) -> list[str]:
    """The method's own options, which a job's ``options`` may set (e.g. metagrad's ``mode``).

    Example:
        >>> options = accepted_options("online")  # online fixes metagrad's mode, outer, screen, starts
        >>> "horizon" in options, "steps" in options, "mode" in options
        (True, False, False)
    """
    tuner = tuner_class(method)
    fixed = {*JOB_FIELDS, *getattr(tuner, "fixed_options", ())}
    return sorted(set(checks.constructor_keywords(tuner)) - fixed)


def check_groups(method: str, groups: str | Sequence[str] | None, params: Params) -> tuple[str, ...]:
    """The parameter groups ``method`` searches for ``params`` (θ₀ of the objective): () for
    None, else the prefixes; a ValueError naming ``groups`` where they do not fit ``params``
    or ``method`` searches one η and one β (grid, online).

    Example:
        >>> import torch
        >>> check_groups("tpe", "layers", {"0.weight": torch.ones(1), "2.bias": torch.ones(1)})
        ('0', '2')
    """
    return tuner_class(method).check_groups(groups, params)


def build_tuner(job: TuningJob, objective: Objective | None = None, callback: Callback | None = None) -> Tuner:
    """The tuner that runs ``job`` (on ``objective`` where given, e.g. one that is not
    registered; else the job's, built from the registry), reporting each trial to ``callback``.

    Raises:
        ValueError: an unknown method, or an option the method does not take (the message
            lists those it does).
    """
    tuner = tuner_class(job.method)
    checks.keywords(f"method {job.method!r}", job.options, accepted_options(job.method))
    return tuner(objective or job.build_objective(), budget=job.budget, seed=job.seed, space=job.space,
                 steps=job.steps, groups=job.groups, schedule=job.schedule, callback=callback, **job.options)


def run(job: TuningJob, objective: Objective | None = None, callback: Callback | None = None,
        history: Sequence[Trial] = ()) -> TuneResult:
    """Run ``job`` in this process (after ``history``, the trials an interrupted run of it recorded).

    Example:
        >>> res = run(TuningJob("quadratic", "random", budget=3_000, steps=50))
        >>> len(res.trials), res.best_value <= min(t.value for t in res.trials)
        (58, True)
    """
    return build_tuner(job, objective, callback).run(history)


__all__ = ["JOB_FIELDS", "METHODS", "Callback", "ChainStep", "Trial", "TrialStatus", "TuneResult", "Tuner", "accepted_options",
           "build_tuner", "check_groups", "run", "tuner_class"]
