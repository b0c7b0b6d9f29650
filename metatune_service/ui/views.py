"""What the dashboard's pages show, as JSON: a job (its spec, trials and figures) and a
comparison (its jobs, convergence and table), read from the database and turned into figures
by :mod:`metatune.figures` (the one place their series, contours and paths are computed)."""

from __future__ import annotations

import json
import logging
import math
from functools import lru_cache
from typing import Any, Sequence

from metatune import figures
from metatune.compare import json_safe
from metatune.job import TuningJob
from metatune.tuners import TuneResult
from metatune_service import comparisons, crud
from metatune_service.api.presenters import job_public, trial_public
from metatune_service.core.db import Database
from metatune_service.models import Comparison, Job
from metatune_service.status import JobStatus

log = logging.getLogger("metatune.ui")


@lru_cache(maxsize=128)
def curvature_at_start(objective_json: str, seed: int) -> tuple[float, ...] | None:
    """The Hessian eigenvalues at θ₀ the stability map is drawn from (the estimate every
    comparison's plane uses, :func:`metatune.tuners.base.estimate_curvature`), cached per
    objective and seed; None where it cannot be estimated (then only the trials are drawn)."""
    from metatune.tuners.base import estimate_curvature

    spec = json.loads(objective_json)
    try:
        objective = TuningJob(objective=spec["name"], objective_params=spec["params"]).build_objective()
        curvature = estimate_curvature(objective, objective.init_params(seed), objective.batches(seed, objective.steps))
    except Exception:  # noqa: BLE001 - a figure without its map beats a page that fails
        log.exception("the curvature of %s at seed %d could not be estimated", spec["name"], seed)
        return None
    values = tuple(curvature.eigenvalues)
    return values if values and all(math.isfinite(v) for v in values) else None


def _eigenvalues(spec: TuningJob, seed: int) -> tuple[float, ...] | None:
    key = json.dumps({"name": spec.objective, "params": dict(spec.objective_params)}, sort_keys=True)
    return curvature_at_start(key, seed)


def job_view(db: Database, job: Job) -> dict[str, Any]:
    """A job's page: the job as the API shows it, its trials (as ``GET …/trials``) and the
    data of its charts: ``best_so_far`` (:func:`~metatune.figures.best_so_far_steps`), ``plane``
    (:func:`~metatune.figures.plane_data`: stability map, trials, metagrad's paths),
    ``outer`` (:func:`~metatune.figures.outer_steps`, metagrad only) and ``schedule`` (the
    best trial's η_t and β_t, for a schedule space)."""
    spec = job.tuning_job()
    rows = crud.list_trials(db, job_id=job.id, limit=10**9)
    metrics = crud.trial_metrics(db, trial_ids=[r.id for r in rows])
    trials = crud.as_library_trials(db, job.id, rows, metrics, chains=True)
    objective = spec.build_objective()
    space = spec.space or objective.space
    eigenvalues = _eigenvalues(spec, job.seed)
    plane = figures.plane_data(space, eigenvalues, trials, objective.optimum) if eigenvalues else {
        "map": None, "trials": figures.trial_points(trials), "paths": figures.metagrad_paths(trials), "optimum": None}
    completed = [t for t in trials if t.status.value == "completed" and math.isfinite(t.value)]
    schedule = None
    if not spec.schedule.constant and completed:
        best = min(completed, key=lambda t: t.value)
        schedule = figures.schedule_series({f"best (trial {best.number})": best.point}, spec.steps or objective.steps)
    charts = json_safe({"best_so_far": figures.best_so_far_steps(trials), "plane": plane,
                        "outer": figures.outer_steps(trials) if job.method == "metagrad" else [],
                        "schedule": schedule})
    shown = crud.job_view(db, job_id=job.id)
    assert shown is not None  # jobs are never deleted
    return {"job": job_public(shown).model_dump(mode="json"), "final": job.status.final,
            "trials": [trial_public(r, metrics[r.id]).model_dump(mode="json") for r in rows], **charts}


def comparison_view(db: Database, group: Comparison, jobs: Sequence[Job], plots: Sequence[str]) -> dict[str, Any]:
    """A comparison's page: its jobs, the best-so-far of each method over the seeds
    (:func:`~metatune.figures.convergence_data`, median and min–max band; running jobs
    count with what they have recorded), the table once a worker has built it, and the
    URLs of its PNGs."""
    budget = jobs[0].tuning_job().budget if jobs else 1.0
    results: dict[str, list[TuneResult]] = {}
    for job in jobs:
        trials = crud.library_trials(db, job_id=job.id)
        if trials:
            results.setdefault(job.method, []).append(TuneResult(job.method, job.objective, job.seed, budget, trials))
    status = comparisons.overall_status(jobs)
    return json_safe({
        "id": group.id, "name": group.name, "objective": group.objective, "status": status.value,
        "final": status.final, "budget": budget,
        "jobs": [job_public(v).model_dump(mode="json") for v in crud.job_views(db, job_ids=[j.id for j in jobs])],
        "convergence": figures.convergence_data(results, budget),
        "target": None if group.table is None else group.table.get("target"),
        "table": None if group.table is None else group.table.get("summary"),
        "plots": list(plots),
    })


FINAL = [s.value for s in JobStatus if s.final]
"""The statuses a job ends in (a page stops following a job once it has one)."""
