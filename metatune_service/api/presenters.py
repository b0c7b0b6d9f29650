"""Rows as the API shows them: the one place a table row becomes a response body, shared by
the routes (no route module imports another)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from metatune.compare import json_safe
from metatune.point import MetaGradient, Point
from metatune.schedule import Schedule as LibrarySchedule
from metatune_service import crud
from metatune_service.schemas import JobPublic, MetaGradientPublic, Schedule, TrialPublic, TrialSummary


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """``body`` as JSON, encoded once by pydantic in the calling (worker) thread: a route that
    returns it skips FastAPI's validation of the model it built itself and the encoding on the
    event loop (its ``response_model`` still documents the body)."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def job_public(view: crud.JobView) -> JobPublic:
    """The job as the API shows it, from its :class:`~metatune_service.crud.JobView`.

    Budget, groups and schedule are read from the stored spec (:meth:`TuningJob.to_json`, which
    always writes them) rather than through :meth:`Job.tuning_job`, whose checks cost most of
    a page of jobs' time."""
    job = view.job
    space = job.spec.get("space") or {}
    schedule = LibrarySchedule.parse(space.get("schedule"))
    return JobPublic(
        id=job.id, status=job.status, owner=job.owner, objective=job.objective, method=job.method, seed=job.seed,
        spec=job.spec, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        error=job.error, trials=view.trials, gradient_evals=job.gradient_evals,
        budget=job.spec["budget"]["gradient_evals"], attempts=job.attempts, comparison_id=job.comparison_id,
        groups=space.get("groups"), schedule=Schedule(knots=schedule.knots, shape=schedule.shape),
        best_trial=None if view.best is None else trial_summary(view.best),
    )


def point_fields(point: Point) -> dict[str, Any]:
    """``lr``, ``momentum`` and ``schedule`` of a trial's response: :meth:`Point.to_json`, with
    ``schedule`` null unless the point has a fixed shape."""
    return {"schedule": None, **point.to_json()}


def trial_summary(trial: crud.BestTrial) -> TrialSummary:
    return TrialSummary(number=trial.number, **point_fields(crud.point_of(trial)), value=trial.value,
                        status=trial.status)


def trial_public(trial: Any, metrics: Mapping[str, float | None] | None = None) -> TrialPublic:
    """The trial (a row with :class:`~metatune_service.models.Trial`'s columns) as the API shows
    it: its point in JSON form (floats, lists of knot values, dicts of those by group; a
    warm-up + cosine point's ``schedule``) and, for a metagrad trial (its ``metrics`` hold
    one), the meta-gradient in the same form."""
    point = crud.point_of(trial)
    metrics = dict(metrics or {})
    shown = ("lr", "momentum", "schedule", "metrics", "meta_gradient")
    fields = {k: getattr(trial, k) for k in TrialPublic.model_fields if k not in shown}
    return TrialPublic(**fields, **point_fields(point), meta_gradient=meta_gradient_public(point, metrics),
                       metrics=metrics)


def meta_gradient_public(point: Point, metrics: Mapping[str, float | None]) -> MetaGradientPublic | None:
    """∂ℓ/∂η and ∂ℓ/∂β per group and knot of ``point`` from a trial's flat metrics
    (:meth:`MetaGradient.from_metrics`; a missing or non-finite derivative is null); None where
    the metrics hold no meta-gradient."""
    stored = {k: math.nan if v is None else v for k, v in metrics.items()}  # NULL: stored as not finite
    gradient = MetaGradient.from_metrics(stored, point.groups, point.knots)
    if gradient is None:
        return None
    dlr, dmomentum = gradient.as_point_values(point.groups, point.knots)
    return MetaGradientPublic(lr=json_safe(dlr), momentum=json_safe(dmomentum),
                              growth_rate=json_safe(gradient.growth_rate),
                              amplification=json_safe(gradient.amplification))
