"""The data layer: jobs, trials, metrics, tokens. Knows nothing of HTTP; keyword arguments only.

Every write goes through :meth:`metatune_service.core.db.Database.write` (one transaction, one lock on
SQLite). A worker claims a job atomically: one ``UPDATE … WHERE id = (SELECT … FOR UPDATE
SKIP LOCKED) … RETURNING`` on PostgreSQL, and the same UPDATE under SQLite's single writer.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Sequence

from sqlalchemy import ColumnElement, Row, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from metatune.compare import json_safe
from metatune.job import TuningJob
from metatune.point import MetaGradient, Point
from metatune.tuners import Trial as LibraryTrial
from metatune.tuners import ChainStep, TrialStatus
from metatune_service.core.db import Database
from metatune_service.models import ApiToken, Clock, Comparison, Job, MetagradStep, Trial, TrialMetric, is_id, utcnow
from metatune_service.status import JobStatus


_JOBS, _TRIALS, _METRICS, _TOKENS = Job.__table__, Trial.__table__, TrialMetric.__table__, ApiToken.__table__


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- tokens -----------------------------------------------------------------------------------------


def create_token(db: Database, *, owner: str) -> str:
    """A new random token for ``owner``; only its hash is stored. Returns the token (shown once)."""
    token = secrets.token_urlsafe(32)
    with db.write() as session:
        session.add(ApiToken(owner=owner, token_hash=hash_token(token)))
    return token


def count_tokens(db: Database) -> int:
    """How many stored tokens are not revoked."""
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.revoked.is_(False))) or 0)


def list_tokens(db: Database, *, owner: str | None = None) -> list[ApiToken]:
    """Stored tokens (of ``owner``, or all), oldest first: their ids, owners and times, never the
    token (only its hash is stored)."""
    query = select(ApiToken).order_by(ApiToken.id)
    with db.read() as session:
        return list(session.scalars(query if owner is None else query.where(ApiToken.owner == owner)))


def revoke_tokens(db: Database, *, token_id: int | None = None, owner: str | None = None) -> int:
    """Revoke the token ``token_id``, or every token of ``owner``; how many were revoked now
    (a revoked token authenticates nothing from the next request on)."""
    if (token_id is None) == (owner is None):
        raise ValueError("give token_id or owner, not both or neither")
    which = ApiToken.id == token_id if token_id is not None else ApiToken.owner == owner
    with db.write() as session:
        return session.execute(update(ApiToken).where(which, ApiToken.revoked.is_(False))
                               .values(revoked=True)).rowcount


_LIVE_TOKEN = (select(_TOKENS.c.id, _TOKENS.c.owner, _TOKENS.c.token_hash, _TOKENS.c.last_used_at)
               .where(_TOKENS.c.token_hash == bindparam("digest"), _TOKENS.c.revoked.is_(False)))
"""A stored, unrevoked token by its hash: read on every request that carries one (Core, built once)."""


def owner_of_token(db: Database, *, token: str) -> str | None:
    """The owner of a stored, unrevoked token (its last use is recorded, to the minute), or None."""
    digest = hash_token(token)
    with db.read() as session:
        row = session.execute(_LIVE_TOKEN, {"digest": digest}).first()
    if row is None or not secrets.compare_digest(row.token_hash, digest):
        return None
    if row.last_used_at is None or utcnow() - _aware(row.last_used_at) > timedelta(minutes=1):
        with db.write() as session:
            session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow()))
    return str(row.owner)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- jobs -------------------------------------------------------------------------------------------


class IdempotencyConflict(Exception):
    """An idempotency key reused by its owner for a different request."""


class Submission(NamedTuple):
    """What :func:`create_jobs` queued (or found): the jobs, their comparison (or None), and
    whether they were made by an earlier request with the same idempotency key (``reused``:
    they may have run since, so show them as they are now)."""

    jobs: list[Row[Any]]
    """Rows with the columns of :class:`Job`."""
    comparison: Comparison | None
    reused: bool


def create_jobs(db: Database, *, owner: str, specs: Sequence[TuningJob], comparison: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Submission:
    """Queue ``specs`` (validated jobs, stored as their JSON) in one transaction, optionally as
    one comparison.

    With ``idempotency_key``, a request the owner made before with that key is not made again:
    its jobs (and comparison) are returned as stored, or :class:`IdempotencyConflict` is raised
    when the request differs (:func:`request_hash`). The key is stored with the job (or the
    comparison) under a unique ``(owner, key)`` constraint, and the insert is tried first: a
    new key (the usual case) costs one write and no lookup, and of two submissions racing with
    one key the database keeps one while the other, refused by the constraint, reads it back.
    """
    digest = request_hash(specs, comparison) if idempotency_key is not None else None
    try:
        with db.write() as session:
            jobs, group = _insert_jobs(session, owner, specs, comparison, idempotency_key, digest)
        return Submission(jobs, group, reused=False)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with db.read() as session:  # this key was used before, or by a racing submission that committed first
            found = _submitted(session, owner, idempotency_key, digest, comparison is not None)
        if found is None:
            raise
        return Submission(*found, reused=True)


_NEW_JOBS = insert(_JOBS).returning(*_JOBS.c, sort_by_parameter_order=True)
"""Queue jobs and read back each as stored, in the order given (its id, time and defaults)."""


def _insert_jobs(session: Session, owner: str, specs: Sequence[TuningJob], comparison: dict[str, Any] | None,
                 key: str | None, digest: str | None) -> tuple[list[Row[Any]], Comparison | None]:
    group = None
    if comparison is not None:
        group = Comparison(owner=owner, name=comparison["name"], objective=comparison["objective"],
                           spec=comparison["spec"], idempotency_key=key, request_hash=digest)
        session.add(group)
        session.flush()
    keyed = {"idempotency_key": key, "request_hash": digest} if group is None else {}
    rows = [{"owner": owner, "spec": spec.to_json(), "method": spec.method, "objective": spec.objective,
             "seed": spec.seed, "comparison_id": group.id if group else None, **keyed} for spec in specs]
    return list(session.execute(_NEW_JOBS, rows)), group


def _submitted(session: Session, owner: str, key: str, digest: str | None,
               as_comparison: bool) -> tuple[list[Row[Any]], Comparison | None] | None:
    """What the owner submitted with ``key`` (None if nothing); IdempotencyConflict if it was
    another request."""
    if as_comparison:
        group = session.scalar(select(Comparison).where(Comparison.owner == owner, Comparison.idempotency_key == key))
        first = group
    else:
        group, first = None, session.execute(select(_JOBS).where(_JOBS.c.owner == owner,
                                                                 _JOBS.c.idempotency_key == key)).first()
    if first is None:
        return None
    if first.request_hash != digest:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for another request: use a new key for a "
                                  f"new request, or send the first request again unchanged")
    if group is None:
        return [first], None
    jobs = select(_JOBS).where(_JOBS.c.comparison_id == group.id).order_by(_JOBS.c.created_at, _JOBS.c.id)
    return list(session.execute(jobs)), group


def request_hash(specs: Sequence[TuningJob], comparison: dict[str, Any] | None = None) -> str:
    """SHA-256 of the normalised request (the jobs' JSON, and the comparison's): two requests
    with the same hash queue the same work.

    Example:
        >>> request_hash([TuningJob("quadratic", "tpe")]) == request_hash([TuningJob("quadratic", "tpe")])
        True
    """
    text = json.dumps({"jobs": [spec.to_json() for spec in specs], "comparison": comparison}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def get_job(db: Database, *, job_id: str, owner: str | None = None) -> Job | None:
    """The job, if it exists and (when ``owner`` is given) belongs to ``owner``."""
    if not is_id(job_id):
        return None
    with db.read() as session:
        job = session.get(Job, job_id)
    return job if job is not None and (owner is None or job.owner == owner) else None


class BestTrial(NamedTuple):
    """What a job's summary shows of its best trial."""

    number: int
    point: dict[str, Any]
    value: float | None
    status: str


class JobView(NamedTuple):
    """A job as it is shown: ``job`` has the columns of :class:`Job` (a row read by
    :data:`JOB_VIEW`, or a :class:`Job`), ``trials`` how many it has recorded, ``best`` its
    best trial."""

    job: Any
    trials: int
    best: BestTrial | None


_BEST = _TRIALS.alias("best")
JOB_VIEW = (select(_JOBS,
                   select(func.count()).where(_TRIALS.c.job_id == _JOBS.c.id).scalar_subquery().label("trial_count"),
                   _BEST.c.point.label("best_point"), _BEST.c.value.label("best_trial_value"),
                   _BEST.c.status.label("best_status"))
            .outerjoin_from(_JOBS, _BEST, (_BEST.c.job_id == _JOBS.c.id) & (_BEST.c.number == _JOBS.c.best_trial)))
"""A job's columns, its trial count and its best trial's, in one statement (Core, not the ORM:
reading a job is the service's most frequent request, and one statement through Core costs a
fifth of the CPU of three through the ORM's identity map)."""
_JOB_BY_ID = JOB_VIEW.where(_JOBS.c.id == bindparam("job_id"))
_OWNED_JOB = _JOB_BY_ID.where(_JOBS.c.owner == bindparam("owner"))
# Statements built once, their values bound at each call: SQLAlchemy finds their compiled form
# by a cache key it computes again for every new statement object.
_TRIALS_AFTER = (select(_TRIALS).where(_TRIALS.c.job_id == bindparam("job_id"), _TRIALS.c.number > bindparam("after"))
                 .order_by(_TRIALS.c.number).limit(bindparam("limit")))
_TRIAL = select(_TRIALS).where(_TRIALS.c.job_id == bindparam("job_id"), _TRIALS.c.number == bindparam("number"))
_METRICS_OF = (select(_METRICS.c.trial_id, _METRICS.c.name, _METRICS.c.value)
               .where(_METRICS.c.trial_id.in_(bindparam("trial_ids", expanding=True))))


def _view(row: Row[Any]) -> JobView:
    best = (None if row.best_point is None else
            BestTrial(row.best_trial, row.best_point, row.best_trial_value, row.best_status))
    return JobView(row, int(row.trial_count), best)


def job_view(db: Database, *, job_id: str, owner: str | None = None) -> JobView | None:
    """The job as it is shown, if it exists and (when ``owner`` is given) belongs to ``owner``."""
    if not is_id(job_id):
        return None
    with db.read() as session:
        row = (session.execute(_JOB_BY_ID, {"job_id": job_id}) if owner is None else
               session.execute(_OWNED_JOB, {"job_id": job_id, "owner": owner})).first()
    return None if row is None else _view(row)


def job_views(db: Database, *, job_ids: Sequence[str]) -> list[JobView]:
    """The views of ``job_ids`` (those that exist), in the order given."""
    if not job_ids:
        return []
    with db.read() as session:
        found = {row.id: _view(row) for row in session.execute(JOB_VIEW.where(_JOBS.c.id.in_(job_ids)))}
    return [found[i] for i in job_ids if i in found]


def list_jobs(db: Database, *, owner: str, status: JobStatus | None = None, method: str | None = None,
              objective: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[JobView], int]:
    """A page of the owner's jobs, newest first, and how many match in all."""
    match = [_JOBS.c.owner == owner]
    for column, value in ((_JOBS.c.status, status), (_JOBS.c.method, method), (_JOBS.c.objective, objective)):
        if value is not None:
            match.append(column == value)
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(_JOBS).where(*match))
        rows = session.execute(JOB_VIEW.where(*match).order_by(_JOBS.c.created_at.desc(), _JOBS.c.id)
                               .limit(limit).offset(offset)).all()
    return [_view(row) for row in rows], int(total or 0)


def request_cancel(db: Database, *, job_id: str) -> Job | None:
    """A queued job is cancelled at once; a running one is flagged for its worker."""
    with db.write() as session:
        job = session.get(Job, job_id)
        if job is None or job.status.final:
            return job
        if job.status is JobStatus.QUEUED:
            job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
        job.cancel_requested = True
    return job


def claim_job(db: Database, *, worker: str, lease_seconds: float, max_attempts: int,
              clock: Clock = utcnow) -> Job | None:
    """Claim the oldest queued job, or a running one whose lease expired (its worker died) by
    ``clock``'s time."""
    now = clock()
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires < now)
    claimable = or_(Job.status == JobStatus.QUEUED, expired)
    pick = select(Job.id).where(claimable).order_by(Job.created_at).limit(1)
    if not db.is_sqlite:
        pick = pick.with_for_update(skip_locked=True)
    statement = (
        update(Job).where(Job.id == pick.scalar_subquery(), claimable)
        .values(status=JobStatus.RUNNING, lease_holder=worker,
                lease_expires=now + timedelta(seconds=lease_seconds),
                heartbeat_at=now, attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))
        .returning(Job.id)
    )
    with db.write() as session:
        job_id = session.scalar(statement)
        if job_id is None:
            return None
        job = session.get(Job, job_id)
        if job.attempts > max_attempts:
            job.status, job.finished_at = JobStatus.FAILED, now
            job.error = (job.error or "") + f" (gave up after {max_attempts} attempts)"
            return None
    return job


def _held_by(job_id: str, worker: str) -> ColumnElement[bool]:
    """The job's row while ``worker`` holds its lease (it runs there)."""
    return (Job.id == job_id) & (Job.lease_holder == worker) & (Job.status == JobStatus.RUNNING)


def heartbeat(db: Database, *, job_id: str, worker: str, lease_seconds: float,
              clock: Clock = utcnow) -> bool | None:
    """Renew the lease until ``lease_seconds`` after ``clock``'s time; returns whether a cancel
    was requested (None: the lease was lost)."""
    now = clock()
    with db.write() as session:
        done = session.execute(update(Job).where(_held_by(job_id, worker))
                               .values(heartbeat_at=now, lease_expires=now + timedelta(seconds=lease_seconds))
                               .returning(Job.cancel_requested)).first()
    return None if done is None else bool(done[0])


def _hold(session: Session, job_id: str, worker: str) -> Job | None:
    """The job, if ``worker`` still holds it, checked by an UPDATE so that the check and what
    follows are one transaction under the job's row lock (the write lock on SQLite)."""
    held = session.execute(update(Job).where(_held_by(job_id, worker)).values(heartbeat_at=utcnow())
                           .returning(Job.id)).first()
    return None if held is None else session.get(Job, job_id)


def finish_job(db: Database, *, job_id: str, worker: str, status: JobStatus, error: str | None = None,
               clock: Clock = utcnow) -> None:
    """End the job with ``status`` at ``clock``'s time, if ``worker`` still holds it."""
    with db.write() as session:
        job = _hold(session, job_id, worker)
        if job is not None:
            job.status, job.finished_at, job.error, job.lease_expires = status, clock(), error, None


def release_job(db: Database, *, job_id: str, worker: str, error: str | None) -> None:
    """Give a job back to the queue after a failed attempt (claimed again up to max_attempts)."""
    with db.write() as session:
        session.execute(update(Job).where(_held_by(job_id, worker))
                        .values(status=JobStatus.QUEUED, lease_holder=None, lease_expires=None, error=error))


# -- trials -----------------------------------------------------------------------------------------


def point_columns(point: Point) -> dict[str, Any]:
    """The columns a :class:`~metatune.point.Point` is stored in: ``point``, its JSON form
    (:meth:`Point.to_json`: it round-trips exactly), and the sort keys ``lr``/``momentum``:
    η and β of the first knot of a point without groups (the point's own η and β when it is
    constant, the peak η and β of a warm-up + cosine point), NULL for a per-group point."""
    keyed = not point.groups
    return {"point": point.to_json(), "lr": point.lrs[0] if keyed else None,
            "momentum": point.momenta[0] if keyed else None}


def point_of(row: Any) -> Point:
    """Inverse of :func:`point_columns` (through :meth:`Point.from_json`): the point of any row
    with a ``point`` column (a trial's, a :class:`MetagradStep`)."""
    return Point.from_json(row.point)


def meta_gradient_columns(gradient: MetaGradient, point: Point) -> dict[str, Any]:
    """The columns of a meta-gradient at ``point``: ``meta_gradient`` = ``{"lr": ∂ℓ/∂η,
    "momentum": ∂ℓ/∂β}`` in the point's JSON form (per group and knot; a value that is not
    finite as null), and the sort keys ``dvalue_dlr``/``dvalue_dmomentum`` as in
    :func:`point_columns`."""
    dlr, dmomentum = gradient.as_point_values(point.groups, point.knots)
    keyed = not point.groups
    return {"meta_gradient": {"lr": json_safe(dlr), "momentum": json_safe(dmomentum)},
            "dvalue_dlr": _finite(gradient.dlr[0]) if keyed else None,
            "dvalue_dmomentum": _finite(gradient.dmomentum[0]) if keyed else None}


def trial_row(job_id: str, trial: LibraryTrial, lambda_max: float | None) -> dict[str, Any]:
    """The ``trials`` row of a library Trial (inf and NaN stored as NULL; ``node``: the Ray node
    that evaluated it, NULL in-process)."""
    return {
        "job_id": job_id, "number": trial.number, **point_columns(trial.point), "status": trial.status.value,
        "value": _finite(trial.value), "spectral_radius": _finite(trial.spectral_radius),
        "stable": trial.stable, "lambda_max": lambda_max, "gradient_evals": trial.gradient_evals,
        "cumulative_evals": trial.cumulative_evals, "wall_seconds": trial.wall_time, "error": trial.error,
        "start": None if trial.chain is None else trial.chain.start, "node": trial.node,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def write_trials(db: Database, *, job_id: str, worker: str, trials: Sequence[LibraryTrial],
                 lambda_max: float | None) -> bool:
    """Insert trials, their metrics and metagrad steps in one transaction (bulk inserts: one
    INSERT … RETURNING for the trials, one for the metrics) and update the job's best and
    spend; nothing is written unless ``worker`` still holds the job."""
    with db.write() as session:
        job = _hold(session, job_id, worker)
        if job is None:
            return False
        rows = [trial_row(job_id, trial, lambda_max) for trial in trials]
        ids = session.scalars(insert(Trial).returning(Trial.id, sort_by_parameter_order=True), rows).all()
        metrics = [{"trial_id": trial_id, "step": 0, "name": k, "value": _finite(v)}
                   for trial_id, trial in zip(ids, trials) for k, v in trial.metrics.items()]
        if metrics:
            session.execute(insert(TrialMetric), metrics)
        _add_metagrad_steps(session, job_id, trials)
        for trial in trials:
            if trial.status == TrialStatus.COMPLETED and (job.best_value is None or trial.value < job.best_value):
                job.best_value, job.best_trial = trial.value, trial.number
            job.gradient_evals = max(job.gradient_evals, trial.cumulative_evals)
    return True


def _add_metagrad_steps(session: Session, job_id: str, trials: Sequence[LibraryTrial]) -> None:
    """One row per meta-gradient trial, numbered within its chain, with the chains' own
    decision to accept it (:class:`~metatune.tuners.ChainStep`), as recorded with the trial."""
    steps = [t for t in trials if t.chain is not None and t.chain.gradient is not None]
    counts: dict[int, int] = {}
    for start in {t.chain.start for t in steps}:
        counts[start] = int(session.scalar(select(func.count()).where(MetagradStep.job_id == job_id,
                                                                      MetagradStep.start == start)) or 0)
    rows = []
    for trial in steps:
        chain, gradient = trial.chain, trial.chain.gradient
        rows.append({"job_id": job_id, "trial_number": trial.number, "start": chain.start, "step": counts[chain.start],
                     "value": _finite(trial.value), **point_columns(trial.point),
                     **meta_gradient_columns(gradient, trial.point),
                     "growth_rate": _finite(gradient.growth_rate), "accepted": chain.accepted})
        counts[chain.start] += 1
    if rows:
        session.execute(insert(MetagradStep), rows)


def list_trials(db: Database, *, job_id: str, after: int = -1, limit: int = 1000) -> Sequence[Row[Any]]:
    """The job's trials numbered past ``after``, in order: rows with :class:`Trial`'s columns
    (read through Core: a page of trials is read on every poll of an event stream)."""
    with db.read() as session:
        return session.execute(_TRIALS_AFTER, {"job_id": job_id, "after": after, "limit": limit}).all()


def get_trial(db: Database, *, job_id: str, number: int) -> Row[Any] | None:
    with db.read() as session:
        return session.execute(_TRIAL, {"job_id": job_id, "number": number}).first()


def trial_metrics(db: Database, *, trial_ids: Sequence[int]) -> dict[int, dict[str, float | None]]:
    if not trial_ids:
        return {}
    out: dict[int, dict[str, float | None]] = {i: {} for i in trial_ids}
    with db.read() as session:
        for trial_id, name, value in session.execute(_METRICS_OF, {"trial_ids": list(trial_ids)}):
            out[trial_id][name] = value
    return out


def library_trials(db: Database, *, job_id: str, chains: bool = False) -> list[LibraryTrial]:
    """The job's recorded trials as library Trials (how a resumed job rebuilds its tuner);
    with ``chains``, each metagrad meta-gradient trial also gets back its
    :class:`~metatune.tuners.ChainStep` (chain, acceptance, and the meta-gradient from its
    metrics), as figures of metagrad's paths need."""
    rows = list_trials(db, job_id=job_id, limit=10**9)
    metrics = trial_metrics(db, trial_ids=[r.id for r in rows])
    return as_library_trials(db, job_id, rows, metrics, chains=chains)


def as_library_trials(db: Database, job_id: str, rows: Sequence[Row[Any]], metrics: dict[int, dict[str, float | None]],
                      chains: bool = False) -> list[LibraryTrial]:
    """:func:`library_trials` of rows already read (with their :func:`trial_metrics`)."""
    trials = [library_trial(r, metrics[r.id]) for r in rows]
    if not chains:
        return trials
    with db.read() as session:
        steps = {s.trial_number: s for s in session.scalars(select(MetagradStep).where(MetagradStep.job_id == job_id))}
    for index, trial in enumerate(trials):
        step = steps.get(trial.number)
        if step is not None:
            stored = {k: math.nan if v is None else v for k, v in metrics[rows[index].id].items()}
            gradient = MetaGradient.from_metrics(stored, trial.point.groups, trial.point.knots)
            if gradient is not None:
                trials[index] = replace(trial, chain=ChainStep(step.start, step.accepted, gradient))
    return trials


def library_trial(row: Row[Any] | Trial, metrics: dict[str, float | None]) -> LibraryTrial:
    """The library Trial a stored row stands for (NULL value: inf; NULL metrics left out)."""
    return LibraryTrial(number=row.number, point=point_of(row),
                        value=row.value if row.value is not None else math.inf,
                        diverged=row.status == TrialStatus.DIVERGED,
                        gradient_evals=row.gradient_evals, cumulative_evals=row.cumulative_evals,
                        wall_time=row.wall_seconds, spectral_radius=row.spectral_radius or math.nan,
                        stable=bool(row.stable), metrics={k: v for k, v in metrics.items() if v is not None},
                        status=row.status, error=row.error, node=row.node)


# -- comparisons ------------------------------------------------------------------------------------


def get_comparison(db: Database, *, comparison_id: str,
                   owner: str | None = None) -> tuple[Comparison, list[Job]] | None:
    """The comparison and its jobs (by method, then seed), if it exists and (when ``owner`` is
    given) belongs to ``owner``."""
    if not is_id(comparison_id):
        return None
    with db.read() as session:
        group = session.get(Comparison, comparison_id)
        if group is None or (owner is not None and group.owner != owner):
            return None
        jobs = list(session.scalars(select(Job).where(Job.comparison_id == comparison_id)
                                    .order_by(Job.method, Job.seed)).all())
    return group, jobs


def save_comparison_table(db: Database, *, comparison_id: str, table: dict[str, Any]) -> bool:
    """Store the comparison's table unless one is stored already; returns whether it was stored."""
    with db.write() as session:
        unbuilt = (Comparison.id == comparison_id) & Comparison.table.is_(None)
        saved = session.execute(update(Comparison).where(unbuilt).values(table=table)
                                .returning(Comparison.id)).first()
    return saved is not None


def comparisons_to_build(db: Database, *, ended_before: datetime) -> list[str]:
    """Comparisons without a table whose jobs have all ended, one of them succeeded, and the
    last of them before ``ended_before`` (oldest first): those whose table no worker built
    yet, as when the last open job was cancelled in the queue."""
    of_group = Job.comparison_id == Comparison.id
    still_open = select(Job.id).where(of_group, Job.status.not_in(JobStatus.finals())).exists()
    succeeded = select(Job.id).where(of_group, Job.status == JobStatus.SUCCEEDED).exists()
    recent = select(Job.id).where(of_group, Job.finished_at >= ended_before).exists()
    query = (select(Comparison.id).where(Comparison.table.is_(None), succeeded, ~still_open, ~recent)
             .order_by(Comparison.created_at))
    with db.read() as session:
        return list(session.scalars(query).all())


def cancel_requested(db: Database, *, job_id: str) -> bool:
    with db.read() as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
