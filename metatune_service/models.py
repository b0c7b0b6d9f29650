"""Tables of the service (SQLAlchemy 2.0 typed ORM). Migrations in ``metatune_service/migrations/`` mirror them."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from metatune.job import TuningJob
from metatune_service.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


Clock = Callable[[], datetime]
"""What leases are timed by: :func:`utcnow`, or a test's clock that moves when told."""


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(text: str) -> bool:
    """Whether ``text`` could be an id :func:`new_id` made (32 lower-case hex digits): anything
    else names no row, and is answered without a query."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class Base(DeclarativeBase):
    pass


class StatusColumn(TypeDecorator):
    """A :class:`JobStatus` stored as its value in a ``VARCHAR(16)`` (the column of every
    revision: no migration), read back as the enum."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC ``datetime`` in a ``DateTime(timezone=True)`` column (the column of
    every revision: no migration). PostgreSQL keeps the offset itself; SQLite keeps none, so the
    value is stored as UTC and read back with ``tzinfo=UTC``. A naive datetime is refused: its
    zone is unknown."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no timezone: give UTC times (models.utcnow)")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Comparison(Base):
    """A named group of jobs, one per method × seed at equal budget, with its table."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    objective: Mapped[str] = mapped_column(String(100), index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    table: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The client's ``Idempotency-Key`` (unique per owner), or NULL."""
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the request that made it with its key: a reuse of the key must match it."""

    jobs: Mapped[list[Job]] = relationship(back_populates="comparison")

    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_comparisons_owner_idempotency_key"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[JobStatus] = mapped_column(StatusColumn, default=JobStatus.QUEUED, index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32), index=True)
    objective: Mapped[str] = mapped_column(String(100), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    best_trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    gradient_evals: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    comparison_id: Mapped[str | None] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"),
                                                      nullable=True, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The client's ``Idempotency-Key`` (unique per owner), or NULL."""
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the request that made it with its key: a reuse of the key must match it."""

    comparison: Mapped[Comparison | None] = relationship(back_populates="jobs")
    trials: Mapped[list[Trial]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                               passive_deletes=True, order_by="Trial.number")

    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),
                      Index("ix_jobs_owner_created", "owner", "created_at"),
                      UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"))

    def tuning_job(self) -> TuningJob:
        """The job as the library runs it (its stored ``spec`` is :meth:`TuningJob.to_json`)."""
        return TuningJob.from_json(self.spec)


class Trial(Base):
    """One evaluated point of a job.

    ``point`` is the point's JSON form (:meth:`metatune.point.Point.to_json`), the one record of
    it: ``{"lr": η, "momentum": β}`` with floats, lists of K knot values, or ``{prefix: …}`` of
    those per group, and ``"schedule": {"shape", "warmup", "final"}`` for a warm-up + cosine
    point. ``lr`` and ``momentum`` are sort keys derived from it: for a point without groups, η
    and β of its first knot (the point's own η and β when constant, the peak η and the β of a
    warm-up + cosine point); NULL for a per-group point. ``node`` is the hex id of the Ray node
    that evaluated the trial, NULL when it ran in-process.
    """

    __tablename__ = "trials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    point: Mapped[dict[str, Any]] = mapped_column(JSON)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    momentum: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    spectral_radius: Mapped[float | None] = mapped_column(Float, nullable=True)
    stable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    lambda_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    gradient_evals: Mapped[float] = mapped_column(Float)
    cumulative_evals: Mapped[float] = mapped_column(Float)
    wall_seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="trials")
    metrics: Mapped[list[TrialMetric]] = relationship(cascade="all, delete-orphan", passive_deletes=True)

    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_trials_job_number"),)


class TrialMetric(Base):
    __tablename__ = "trial_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_trial_metrics_trial_step", "trial_id", "step"),)


class MetagradStep(Base):
    """One outer step of a metagrad chain: where, what it gave, and whether it was accepted.

    As in :class:`Trial`, ``point`` is the step's point in JSON form and ``lr``, ``momentum``
    its sort keys. ``meta_gradient`` is ``{"lr": ∂ℓ/∂η, "momentum": ∂ℓ/∂β}`` in the same form
    as the point (one derivative per group and knot; one that was not finite is ``null``), and
    ``dvalue_dlr``, ``dvalue_dmomentum`` its sort keys: the first knot's derivatives for a point
    without groups (NULL where not finite), NULL for a per-group point.
    """

    __tablename__ = "metagrad_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    point: Mapped[dict[str, Any]] = mapped_column(JSON)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    momentum: Mapped[float | None] = mapped_column(Float, nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    meta_gradient: Mapped[dict[str, Any]] = mapped_column(JSON)
    dvalue_dlr: Mapped[float | None] = mapped_column(Float, nullable=True)
    dvalue_dmomentum: Mapped[float | None] = mapped_column(Float, nullable=True)
    growth_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    accepted: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_metagrad_steps_job_start_step", "job_id", "start", "step"),)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
