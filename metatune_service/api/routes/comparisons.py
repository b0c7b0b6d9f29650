"""``/v1/comparisons``: the equal-budget comparison of ``metatune compare``, run as jobs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from metatune import objectives
from metatune.compare import Comparison as LibraryComparison
from metatune.compare import json_safe
from metatune.tuners import TuneResult
from metatune.tuners.base import estimate_curvature
from metatune_service import crud
from metatune_service.api.deps import DatabaseDep, OwnerDep, SettingsDep
from metatune_service.api.presenters import job_public
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.models import Job
from metatune_service.schemas import ComparisonCreate, ComparisonPublic, JobCreate
from metatune_service.status import JobStatus
from metatune_service.validation import SpecError, normalise

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"])
PLOTS = ("convergence", "plane")


@router.post("", status_code=202, response_model=ComparisonPublic)
def create(body: ComparisonCreate, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep) -> ComparisonPublic:
    """One job per method × seed, all at the same objective, space and budget."""
    count = body.seeds if isinstance(body.seeds, int) else len(body.seeds)
    seeds = list(range(count)) if isinstance(body.seeds, int) and 1 <= count <= settings.max_seeds else body.seeds
    if (not 1 <= count <= settings.max_seeds or len(set(seeds)) != len(seeds)
            or not all(0 <= s < 2**31 for s in seeds)):
        raise HTTPException(422, f"seeds={str(body.seeds)[:50]}: give 1 to {settings.max_seeds} distinct seeds "
                                 f"in [0, 2**31) (a count or a list)")
    unknown = sorted(set(body.options) - set(body.methods))
    if unknown:
        raise HTTPException(422, f"options for {unknown}: those methods are not in methods={body.methods}")
    specs = []
    try:
        for method in dict.fromkeys(body.methods):
            for seed in seeds:
                job = JobCreate(objective=body.objective, objective_params=body.objective_params, method=method,
                                options=body.options.get(method, {}), space=body.space, budget=body.budget,
                                resources=body.resources, seed=seed, concurrency=body.concurrency)
                specs.append(normalise(job, settings))
    except SpecError as error:
        raise HTTPException(422, str(error)) from None
    summary = {"name": body.name or f"{body.objective}: {', '.join(body.methods)}", "objective": body.objective,
               "spec": {**body.model_dump(), "seeds": seeds}}
    jobs, group = crud.create_jobs(db, owner=owner, specs=specs, comparison=summary)
    return ComparisonPublic(id=group.id, name=group.name, objective=group.objective, status=JobStatus.QUEUED,
                            jobs=[job_public(db, j, (0, None)) for j in jobs], table=None, plots=[])


@router.get("/{comparison_id}", response_model=ComparisonPublic)
def read(comparison_id: str, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep) -> ComparisonPublic:
    """Its jobs, and once every job has ended, the same table as ``metatune compare``."""
    found = crud.get_comparison(db, comparison_id=comparison_id, owner=owner)
    if found is None:
        raise HTTPException(404, f"no comparison {comparison_id!r}")
    group, jobs = found
    status = overall_status(jobs)
    table = group.table
    if table is None and status is JobStatus.SUCCEEDED:
        table = build_table(db, settings, group.id, jobs)
        crud.save_comparison_table(db, comparison_id=group.id, table=table)
    plots = [f"/v1/comparisons/{group.id}/plots/{name}.png" for name in PLOTS] if table else []
    summary = crud.summaries(db, jobs=jobs)
    return ComparisonPublic(id=group.id, name=group.name, objective=group.objective, status=status,
                            jobs=[job_public(db, j, summary[j.id]) for j in jobs], table=table, plots=plots)


@router.get("/{comparison_id}/plots/{name}.png", response_class=FileResponse)
def plot(comparison_id: str, name: str, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep) -> FileResponse:
    """``convergence`` (best so far against gradient evaluations) or ``plane`` (η–β with ρ = 1)."""
    found = crud.get_comparison(db, comparison_id=comparison_id, owner=owner)
    if found is None:
        raise HTTPException(404, f"no comparison {comparison_id!r}")
    if name not in PLOTS:
        raise HTTPException(404, f"no plot {name!r}: choose one of {list(PLOTS)}")
    path = plot_folder(settings, comparison_id) / f"comparison-{name}.png"
    if not path.exists():
        group, jobs = found
        if not overall_status(jobs).final:
            raise HTTPException(409, "the comparison is still running: plots exist once every job has ended")
        if overall_status(jobs) is not JobStatus.SUCCEEDED:
            raise HTTPException(409, "no job of this comparison succeeded: there is nothing to plot")
        build_table(db, settings, group.id, jobs)
    return FileResponse(path, media_type="image/png")


def overall_status(jobs: list[Job]) -> JobStatus:
    statuses = {j.status for j in jobs}
    if all(s.final for s in statuses):
        return next((s for s in (JobStatus.SUCCEEDED, JobStatus.FAILED) if s in statuses), JobStatus.CANCELLED)
    return JobStatus.RUNNING if statuses - {JobStatus.QUEUED} else JobStatus.QUEUED


def plot_folder(settings: Settings, comparison_id: str) -> Path:
    return Path(settings.output_dir) / "comparisons" / comparison_id


def build_table(db: Database, settings: Settings, comparison_id: str, jobs: list[Job]) -> dict:
    """The library's Comparison over the jobs' recorded trials: summary rows, Markdown, plots."""
    spec = jobs[0].spec
    objective = objectives.get(spec["objective"], **spec["objective_params"])
    results: dict[str, list[TuneResult]] = {}
    for job in jobs:
        if job.status is not JobStatus.SUCCEEDED:
            continue
        trials = crud.library_trials(db, job_id=job.id)
        wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else math.nan
        results.setdefault(job.method, []).append(
            TuneResult(job.method, job.objective, job.seed, spec["budget"]["gradient_evals"], trials, wall))
    seeds = sorted({j.seed for j in jobs})
    reference = next((m for m in results if m != "metagrad"), next(iter(results)))
    target = float(np.median([r.best_value for r in results[reference]]))
    params = objective.init_params(seeds[0])
    curvature = estimate_curvature(objective, params, objective.batches(seeds[0], objective.steps))
    comparison = LibraryComparison(objective, spec["budget"]["gradient_evals"], seeds, results, curvature, target)
    folder = plot_folder(settings, comparison_id)
    folder.mkdir(parents=True, exist_ok=True)
    comparison.plot(str(folder / "comparison"))
    return json_safe({"summary": comparison.summary(), "markdown": comparison.table(), "target": target})
