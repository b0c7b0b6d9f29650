"""Rows as the API shows them: the one place a table row becomes a response body, shared by
the routes (no route module imports another)."""

from __future__ import annotations

from metatune_service import crud
from metatune_service.core.db import Database
from metatune_service.models import Job, Trial
from metatune_service.schemas import JobPublic, TrialPublic, TrialSummary


def job_public(db: Database, job: Job, summary: tuple[int, Trial | None] | None = None) -> JobPublic:
    """The job as the API shows it (``summary``: its trial count and best trial, if known)."""
    trials, best = summary if summary is not None else crud.summaries(db, jobs=[job])[job.id]
    spec = job.tuning_job()
    return JobPublic(
        id=job.id, status=job.status, owner=job.owner, objective=job.objective, method=job.method, seed=job.seed,
        spec=job.spec, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        error=job.error, trials=trials, gradient_evals=job.gradient_evals, budget=spec.budget,
        attempts=job.attempts, comparison_id=job.comparison_id, groups=spec.groups,
        best_trial=None if best is None else trial_summary(best),
    )


def trial_summary(trial: Trial) -> TrialSummary:
    point = crud.point_of(trial)
    return TrialSummary(number=trial.number, lr=point.lr, momentum=point.momentum, value=trial.value,
                        status=trial.status)


def trial_public(trial: Trial, metrics: dict | None = None) -> TrialPublic:
    """The trial as the API shows it: η and β floats, or dicts by group in a per-group space."""
    point = crud.point_of(trial)
    fields = {k: getattr(trial, k) for k in TrialPublic.model_fields if k not in ("lr", "momentum", "metrics")}
    return TrialPublic(**fields, lr=point.lr, momentum=point.momentum, metrics=metrics or {})
