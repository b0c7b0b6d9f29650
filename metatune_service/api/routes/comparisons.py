"""``/v1/comparisons``: the equal-budget comparison of ``metatune compare``, run as jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse, Response

from metatune_service import comparisons, crud
from metatune_service.api.deps import REUSED_KEY, DatabaseDep, IdempotencyKey, OwnerDep, SettingsDep
from metatune_service.api.errors import AUTHENTICATED, WITH_BODY, responses
from metatune_service.api.presenters import job_public, json_response
from metatune_service.core.db import Database
from metatune_service.models import Comparison, Job
from metatune_service.schemas import ComparisonCreate, ComparisonPublic, JobCreate
from metatune_service.status import JobStatus
from metatune_service.validation import SpecError, normalise

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], responses=responses(*AUTHENTICATED))
ComparisonId = Annotated[str, Path(max_length=64, description="a comparison's id (32 hex digits)")]


COMPARISON_LINKS = {name: {"operationId": name, "parameters": {"comparison_id": "$response.body#/id"}}
                    for name in ("readComparison", "comparisonPlot")}
"""What a created comparison's id opens (OpenAPI links)."""


@router.post("", status_code=202, response_model=ComparisonPublic, operation_id="createComparison",
             responses={202: {"links": COMPARISON_LINKS}, **responses(*WITH_BODY), **REUSED_KEY})
def create(body: ComparisonCreate, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep,
           idempotency_key: IdempotencyKey = None) -> ComparisonPublic:
    """One job per method × seed, all at the same objective, space and budget. With an
    ``Idempotency-Key`` used before for the same request, the comparison made then (as it is now)."""
    count = body.seeds if isinstance(body.seeds, int) else len(body.seeds)
    seeds = list(range(count)) if isinstance(body.seeds, int) and 1 <= count <= settings.max_seeds else body.seeds
    if (not 1 <= count <= settings.max_seeds or len(set(seeds)) != len(seeds)
            or not all(0 <= s < 2**31 for s in seeds)):
        raise SpecError(f"seeds={str(body.seeds)[:50]}: give 1 to {settings.max_seeds} distinct seeds "
                        f"in [0, 2**31) (a count or a list)")
    unknown = sorted(set(body.options) - set(body.methods))
    if unknown:
        raise SpecError(f"options for {unknown}: those methods are not in methods={body.methods}")
    specs = [normalise(JobCreate(objective=body.objective, objective_params=body.objective_params, method=method,
                                 options=body.options.get(method, {}), space=body.space, budget=body.budget,
                                 resources=body.resources, seed=seed, concurrency=body.concurrency), settings)
             for method in dict.fromkeys(body.methods) for seed in seeds]
    summary = {"name": body.name or f"{body.objective}: {', '.join(body.methods)}", "objective": body.objective,
               "spec": {**body.model_dump(), "seeds": seeds}}
    try:
        jobs, group, _ = crud.create_jobs(db, owner=owner, specs=specs, comparison=summary,
                                          idempotency_key=idempotency_key)
    except crud.IdempotencyConflict as error:
        raise HTTPException(409, str(error)) from None
    return ComparisonPublic(id=group.id, name=group.name, objective=group.objective,
                            status=comparisons.overall_status(jobs), table=group.table, plots=[],
                            jobs=[job_public(v) for v in crud.job_views(db, job_ids=[j.id for j in jobs])])


@router.get("/{comparison_id}", response_model=ComparisonPublic, operation_id="readComparison", responses=responses(404, 422))
def read(comparison_id: ComparisonId, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep) -> Response:
    """Its jobs, and once a worker has built them after the last job ended, the same table as
    ``metatune compare`` and the plots' URLs (``table`` is null until then)."""
    with db.read():
        group, jobs = owned_comparison(db, comparison_id, owner)
        views = crud.job_views(db, job_ids=[j.id for j in jobs])
    plots = [f"/v1/comparisons/{group.id}/plots/{name}.png" for name in comparisons.plots_of(settings, group.id)]
    return json_response(ComparisonPublic(id=group.id, name=group.name, objective=group.objective,
                                          status=comparisons.overall_status(jobs), table=group.table, plots=plots,
                                          jobs=[job_public(v) for v in views]))


@router.get("/{comparison_id}/plots/{name}.png", response_class=FileResponse, operation_id="comparisonPlot",
            responses={200: {"content": {"image/png": {}}}, **responses(404, 409, 422)})
def plot(comparison_id: ComparisonId, name: Annotated[str, Path(max_length=40)], db: DatabaseDep, settings: SettingsDep,
         owner: OwnerDep) -> FileResponse:
    """``convergence`` (best so far against gradient evaluations), ``plane`` (η–β with ρ = 1), or,
    for a comparison of schedules, ``schedule`` (each method's best η_t and β_t)."""
    _, jobs = owned_comparison(db, comparison_id, owner)
    names = comparisons.plot_names(jobs)
    if name not in names:
        raise HTTPException(404, f"no plot {name!r}: choose one of {list(names)}")
    path = comparisons.plot_path(settings, comparison_id, name)
    if path.exists():
        return FileResponse(path, media_type="image/png")
    status = comparisons.overall_status(jobs)
    if not status.final:
        raise HTTPException(409, "the comparison is still running: plots exist once every job has ended")
    if status is not JobStatus.SUCCEEDED:
        raise HTTPException(409, "no job of this comparison succeeded: there is nothing to plot")
    raise HTTPException(409, "a worker is drawing the plots: they exist within seconds of the last job's end")


def owned_comparison(db: Database, comparison_id: str, owner: str) -> tuple[Comparison, list[Job]]:
    found = crud.get_comparison(db, comparison_id=comparison_id, owner=owner)
    if found is None:
        raise HTTPException(404, f"no comparison {comparison_id!r}")
    return found
