"""A comparison's table and plots, built by a worker once its jobs have ended.

The table is the library's :class:`metatune.compare.Comparison` over the jobs' recorded
trials (the same rows, Markdown and target as ``metatune compare``), stored in the
comparison's row; the plots are PNG files under ``settings.output_dir``. The API only reads
them: a comparison's table is null until a worker has built it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from metatune.compare import Comparison as LibraryComparison
from metatune.compare import json_safe
from metatune.tuners import TuneResult
from metatune.tuners.base import estimate_curvature
from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.models import Job
from metatune_service.status import JobStatus

PLOTS = ("convergence", "plane", "schedule")
"""Every plot a comparison may have; ``schedule`` (each method's best η_t and β_t) only where
its jobs search a schedule (:func:`plot_names`)."""


def overall_status(jobs: Sequence[Job]) -> JobStatus:
    """Succeeded once every job has ended and one succeeded; failed, or cancelled, when every
    job ended and none succeeded; running while a job runs or some have ended; else queued."""
    statuses = {j.status for j in jobs}
    if all(s.final for s in statuses):
        outcomes = (JobStatus.SUCCEEDED, JobStatus.FAILED)
        return next((s for s in outcomes if s in statuses), JobStatus.CANCELLED)
    return JobStatus.RUNNING if statuses - {JobStatus.QUEUED} else JobStatus.QUEUED


def ready(jobs: Sequence[Job]) -> bool:
    """Whether the comparison's table can be built: every job has ended and one succeeded."""
    return overall_status(jobs) is JobStatus.SUCCEEDED


def plot_names(jobs: Sequence[Job]) -> tuple[str, ...]:
    """The plots of a comparison of ``jobs`` (which share one space): all of :data:`PLOTS` where
    they search a schedule, else all but ``schedule``."""
    scheduled = bool(jobs) and not jobs[0].tuning_job().schedule.constant
    return PLOTS if scheduled else tuple(name for name in PLOTS if name != "schedule")


def plot_path(settings: Settings, comparison_id: str, name: str) -> Path:
    """Where the worker writes the comparison's plot ``name`` (one of :data:`PLOTS`)."""
    return Path(settings.output_dir) / "comparisons" / comparison_id / f"comparison-{name}.png"


def build(db: Database, settings: Settings, comparison_id: str) -> bool:
    """Build and store the comparison's table and plots, if every job has ended, one
    succeeded and no table is stored yet; returns whether it did. The plots are written
    before the table, each by an atomic rename, so a stored table means its plots exist."""
    found = crud.get_comparison(db, comparison_id=comparison_id)
    if found is None:
        return False
    group, jobs = found
    if group.table is not None or not ready(jobs):
        return False
    comparison = library_comparison(db, jobs)
    folder = plot_path(settings, comparison_id, PLOTS[0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".building-"))
    try:
        for written in comparison.plot(str(scratch / "comparison")):
            os.replace(written, folder / Path(written).name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = json_safe({"summary": comparison.summary(), "markdown": comparison.table(),
                       "target": comparison.target})
    return crud.save_comparison_table(db, comparison_id=comparison_id, table=table)


def library_comparison(db: Database, jobs: Sequence[Job]) -> LibraryComparison:
    """The library's Comparison over the succeeded jobs' recorded trials; its target is the
    median best value of the first method other than metagrad (as ``metatune compare``)."""
    shared = jobs[0].tuning_job()
    objective, budget = shared.build_objective(), shared.budget
    results: dict[str, list[TuneResult]] = {}
    for job in jobs:
        if job.status is JobStatus.SUCCEEDED:
            results.setdefault(job.method, []).append(_result(db, job, budget))
    seeds = sorted({j.seed for j in jobs})
    reference = next((m for m in results if m != "metagrad"), next(iter(results)))
    target = float(np.median([r.best_value for r in results[reference]]))
    params = objective.init_params(seeds[0])
    curvature = estimate_curvature(objective, params, objective.batches(seeds[0], objective.steps))
    return LibraryComparison(objective, budget, seeds, results, curvature, target, schedule=shared.schedule,
                             steps=shared.steps)


def _result(db: Database, job: Job, budget: float) -> TuneResult:
    trials = crud.library_trials(db, job_id=job.id, chains=True)
    ran = job.finished_at and job.started_at
    wall = (job.finished_at - job.started_at).total_seconds() if ran else math.nan
    return TuneResult(job.method, job.objective, job.seed, budget, trials, wall)


def plots_of(settings: Settings, comparison_id: str) -> list[str]:
    """The names of the comparison's plots that exist."""
    return [name for name in PLOTS if plot_path(settings, comparison_id, name).exists()]
