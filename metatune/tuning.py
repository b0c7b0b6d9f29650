"""``mt.tune``: run a :class:`~metatune.job.TuningJob` on its backend.

The one place that chooses between the in-process run (:func:`metatune.tuners.run`) and
Ray Tune (:func:`metatune.distributed.run`), above both, so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metatune import checks
from metatune.errors import invalid
from metatune.job import TuningJob
from metatune.objectives import Objective, get
from metatune.tuners import Callback, TuneResult, accepted_options, tuner_class
from metatune.tuners import run as run_here

JOB_OPTIONS = ("space", "steps", "groups", "schedule", "resources", "concurrency")
"""Keyword arguments of :func:`tune` that set a field of the job rather than a method option."""

RAY_OPTIONS = ("cancel", "ray_address", "storage", "max_retries", "reuse_actors")
"""Keyword arguments of :func:`tune` for the Ray backend only (:func:`metatune.distributed.run`)."""


def with_options(job: TuningJob, options: Mapping[str, Any]) -> TuningJob:
    """``job`` with ``options``: those among :data:`JOB_OPTIONS` set the job's fields, the
    rest are added to the method's options."""
    fields = {k: v for k, v in options.items() if k in JOB_OPTIONS}
    own = {**job.options, **{k: v for k, v in options.items() if k not in JOB_OPTIONS}}
    return job.with_changes(options=own, **fields)


def job_of(objective: Objective, method: str, budget: float, seed: int, backend: str,
           options: Mapping[str, Any]) -> TuningJob:
    """The job ``tune(objective, method, budget, seed, backend=…, **options)`` runs."""
    return with_options(TuningJob(objective.name, method, dict(objective.params), budget=budget, seed=seed,
                                  backend=backend), options)


def run_job(job: TuningJob, *, objective: Objective | None = None, callback: Callback | None = None,
            **backend_options: Any) -> TuneResult:
    """Run ``job`` on its backend; ``backend_options`` go to the Ray backend (``cancel``,
    ``ray_address``, ``storage``, ``max_retries``, ``reuse_actors``), and ``history`` to either."""
    checks.instance("job", job, TuningJob, "a metatune.TuningJob")
    if job.backend == "ray":
        from metatune.distributed import run

        checks.keywords("the Ray backend", backend_options, [*RAY_OPTIONS, "history"])
        return run(job, objective=objective, callback=callback, **backend_options)
    checks.keywords("the local backend", backend_options, ["history"])
    return run_here(job, objective, callback, backend_options.get("history", ()))


def tune(objective: Objective | str | TuningJob, method: str = "metagrad", budget: float = 20_000, seed: int = 0,
         *, callback: Callback | None = None, backend: str = "local", **options: Any) -> TuneResult:
    """Search (η, β) for ``objective`` with ``method`` within ``budget`` gradient evaluations.

    Args:
        objective: an :class:`~metatune.objectives.Objective`, a registered name, or a whole
            :class:`~metatune.job.TuningJob` (then ``method``, ``budget``, ``seed``, ``backend``
            and the job's fields come from it and ``options`` may hold only run options).
        method: one of :data:`metatune.tuners.METHODS` ("metagrad", "online", "tpe", "random",
            "grid", "cmaes", "gp").
        budget: gradient evaluations the search may spend (tangents and Hessian-vector
            products count as their multiples of a gradient).
        seed: seeds θ₀, the minibatches and the method.
        callback: receives each :class:`~metatune.tuners.base.Trial` as it is recorded.
        backend: "local" (every trial in this process) or "ray" (trials on Ray Tune).
        options: the job's ``space``, ``steps``, ``groups``, ``schedule`` (K knots, or a
            :class:`~metatune.schedule.Schedule`), ``resources`` and ``concurrency``;
            the Ray backend's ``cancel``, ``ray_address``, ``storage``, ``max_retries`` and
            ``reuse_actors``; ``history``; the rest are the method's own options
            (:func:`metatune.tuners.accepted_options`: metagrad's ``mode``, …).

    Raises:
        ValueError: a bad argument, or an option the method does not take (the message
            lists those it does).

    Example:
        >>> res = tune("quadratic", method="random", budget=3_000, seed=0, steps=50)
        >>> len(res.trials), res.best_value < res.trials[0].value or res.best is res.trials[0]
        (58, True)
    """
    run_options = {k: options.pop(k) for k in [*RAY_OPTIONS, "history"] if k in options}
    if isinstance(objective, TuningJob):
        if options:
            raise invalid("options", sorted(options), f"none besides {[*RAY_OPTIONS, 'history']} with a TuningJob")
        return run_job(objective, callback=callback, **run_options)
    built = get(objective) if isinstance(objective, str) else checks.instance(
        "objective", objective, Objective, "an Objective, a registered name or a TuningJob")
    tuner_class(method)
    ray = [*RAY_OPTIONS] if backend == "ray" else []
    checks.keywords(f"tune(method={method!r})", {**options, **run_options},
                    [*accepted_options(method), *JOB_OPTIONS, *ray, "history"])
    job = job_of(built, method, budget, seed, backend, options)
    return run_job(job, objective=built, callback=callback, **run_options)


__all__ = ["JOB_OPTIONS", "RAY_OPTIONS", "job_of", "run_job", "tune", "with_options"]
