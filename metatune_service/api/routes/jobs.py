"""``/v1/jobs``: submit, list, read, cancel, and follow a job's events."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from metatune_service import crud
from metatune_service.api.deps import REUSED_KEY, DatabaseDep, IdempotencyKey, OwnerDep, SettingsDep
from metatune_service.api.errors import AUTHENTICATED, WITH_BODY, responses
from metatune_service.api.presenters import job_public, json_response, trial_public
from metatune_service.core.db import Database
from metatune_service.schemas import JobCreate, JobList, JobPublic, Method, TrialList, TrialPublic
from metatune_service.status import JobStatus
from metatune_service.validation import normalise

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=responses(*AUTHENTICATED))
PAGE = 1000
MAX_ROW = 2**31 - 1
"""The largest offset, trial number or cursor a query takes: bounded in the OpenAPI document and
checked before the database, whose integers (PostgreSQL's 32-bit INTEGER) end here."""
JobId = Annotated[str, Path(max_length=64, description="a job's id (32 hex digits)")]
Filter = Query(None, max_length=100, pattern=r"^[^\x00]*$")


def owned_job(db: Database, job_id: str, owner: str) -> crud.JobView:
    view = crud.job_view(db, job_id=job_id, owner=owner)
    if view is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return view


JOB_LINKS = {name: {"operationId": name, "parameters": {"job_id": "$response.body#/id"}}
             for name in ("readJob", "cancelJob", "listTrials", "readTrial", "jobEvents")}
"""What a submitted job's id opens (OpenAPI links: clients and schemathesis follow them)."""


@router.post("", status_code=202, response_model=JobPublic, operation_id="submitJob",
             responses={202: {"links": JOB_LINKS}, **responses(*WITH_BODY), **REUSED_KEY})
def submit(body: JobCreate, db: DatabaseDep, settings: SettingsDep, owner: OwnerDep,
           idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Queue a tuning job. Only ``objective`` and ``method`` are required. With an
    ``Idempotency-Key`` used before for the same request, the job made then (as it is now)."""
    try:
        submitted = crud.create_jobs(db, owner=owner, specs=[normalise(body, settings)],
                                     idempotency_key=idempotency_key)
    except crud.IdempotencyConflict as error:
        raise HTTPException(409, str(error)) from None
    [job] = submitted.jobs
    if submitted.reused:  # the first request's job, perhaps run since
        return job_public(owned_job(db, job.id, owner))
    return job_public(crud.JobView(job, 0, None))


@router.get("", response_model=JobList, operation_id="listJobs", responses=responses(400, 422))
def list_jobs(db: DatabaseDep, owner: OwnerDep, status: JobStatus | None = None, method: Method | None = None,
              objective: str | None = Filter, limit: int = Query(50, ge=1, le=500),
              offset: int = Query(0, ge=0, le=MAX_ROW), cursor: str | None = Query(None, max_length=20)) -> Response:
    """The caller's jobs, newest first; page with ``limit`` and ``offset`` (or ``cursor``,
    the ``next_cursor`` of the previous page)."""
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > len(str(MAX_ROW)) or int(cursor) > MAX_ROW:
            raise HTTPException(400, f"cursor={cursor!r} is not one this server issued; pass next_cursor as given")
        offset = int(cursor)
    with db.read():
        views, total = crud.list_jobs(db, owner=owner, status=status, method=method, objective=objective,
                                      limit=limit, offset=offset)
    nxt = offset + len(views)
    return json_response(JobList(items=[job_public(v) for v in views], total=total,
                                 next_cursor=str(nxt) if nxt < total else None))


@router.get("/{job_id}", response_model=JobPublic, operation_id="readJob", responses=responses(404, 422))
def read_job(job_id: JobId, db: DatabaseDep, owner: OwnerDep) -> Response:
    return json_response(job_public(owned_job(db, job_id, owner)))


@router.post("/{job_id}/cancel", response_model=JobPublic, operation_id="cancelJob", responses=responses(404, *WITH_BODY))
def cancel(job_id: JobId, db: DatabaseDep, owner: OwnerDep) -> JobPublic:
    """A queued job is cancelled at once; a running one within seconds (its worker stops Ray)."""
    owned_job(db, job_id, owner)
    crud.request_cancel(db, job_id=job_id)
    return job_public(owned_job(db, job_id, owner))


@router.get("/{job_id}/trials", response_model=TrialList, operation_id="listTrials", responses=responses(404, 422))
def list_trials(job_id: JobId, db: DatabaseDep, owner: OwnerDep, after: int = Query(-1, ge=-1, le=MAX_ROW),
                limit: int = Query(1000, ge=1, le=10_000)) -> Response:
    """Trials in order; ``after`` = the last number already seen; ``total``: the job's trials."""
    with db.read():
        view = owned_job(db, job_id, owner)
        trials = crud.list_trials(db, job_id=job_id, after=after, limit=limit)
        metrics = crud.trial_metrics(db, trial_ids=[t.id for t in trials])
    return json_response(TrialList(items=[trial_public(t, metrics[t.id]) for t in trials], total=view.trials))


@router.get("/{job_id}/trials/{number}", response_model=TrialPublic, operation_id="readTrial",
            responses=responses(404, 422))
def read_trial(job_id: JobId, number: Annotated[int, Path(ge=0, le=MAX_ROW)], db: DatabaseDep,
               owner: OwnerDep) -> Response:
    with db.read():
        owned_job(db, job_id, owner)
        trial = crud.get_trial(db, job_id=job_id, number=number)
        if trial is None:
            raise HTTPException(404, f"job {job_id!r} has no trial {number}")
        return json_response(trial_public(trial, crud.trial_metrics(db, trial_ids=[trial.id])[trial.id]))


@router.get("/{job_id}/events", response_class=StreamingResponse, operation_id="jobEvents",
            responses={200: {"content": {"text/event-stream": {}}}, **responses(404, 422)})
def events(job_id: JobId, db: DatabaseDep, owner: OwnerDep, settings: SettingsDep,
           interval: float = Query(0.5, ge=0.05, le=10)) -> StreamingResponse:
    """Server-sent events: ``status`` on every status change, ``trial`` for each new trial (with
    its metrics), until the job ends (then one last ``status``); a ``: keep-alive`` comment
    after ``keepalive_seconds`` without an event, so that clients and proxies with a read
    timeout keep the stream."""
    first = _poll(db, job_id, -1, owner=owner)  # in this request's thread: the stream starts with it
    if first is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return StreamingResponse(_event_stream(db, job_id, first, interval, settings.keepalive_seconds),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


Poll = tuple[Any, list[str], int]
"""One poll of an event stream: the job, its new ``trial`` events, the last trial number sent."""


async def _event_stream(db: Database, job_id: str, polled: Poll, interval: float,
                        keepalive: float) -> AsyncIterator[str]:
    status, sent_at = None, time.monotonic()
    while True:
        job, events, last = polled
        if events:
            sent_at = time.monotonic()
            yield "".join(events)
        if job.status != status:
            status, sent_at = job.status, time.monotonic()
            yield _sse("status", {"status": status.value, "gradient_evals": job.gradient_evals,
                                  "budget": job.spec["budget"]["gradient_evals"], "error": job.error})
        if status.final:
            return
        if time.monotonic() - sent_at >= keepalive:
            sent_at = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(interval)
        following = await run_in_threadpool(_poll, db, job_id, last)
        assert following is not None  # jobs are never deleted
        polled = following


def _poll(db: Database, job_id: str, last: int, owner: str | None = None) -> Poll | None:
    """One poll of an event stream, in one thread and one read: the job (None if it is not
    ``owner``'s), then the ``trial`` events of every trial numbered past ``last`` (all recorded
    before the job was read, so a final status is sent after its last trial), and the last
    number sent."""
    events = []
    with db.read():
        view = crud.job_view(db, job_id=job_id, owner=owner)
        if view is None:
            return None
        while True:
            trials = crud.list_trials(db, job_id=job_id, after=last, limit=PAGE)
            metrics = crud.trial_metrics(db, trial_ids=[t.id for t in trials])
            for trial in trials:
                last = trial.number
                events.append(_sse("trial", trial_public(trial, metrics[trial.id]).model_dump(mode="json")))
            if len(trials) < PAGE:
                return view.job, events, last


def _sse(event: str, data: dict) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    return f"event: {event}\ndata: {json.dumps(clean)}\n\n"
