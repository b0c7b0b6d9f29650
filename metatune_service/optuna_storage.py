"""Every job as an Optuna study, in Optuna's own schema and through Optuna's public API, so
that ``optuna-dashboard <url>`` opens the service's jobs.

One study per job (:func:`study_name`, direction minimize; the job's spec, owner and status
in its user attrs) and one Optuna trial per recorded trial, in number order: the trial's
point as flat params (:meth:`metatune.point.Point.to_params`: ``lr``, ``momentum``,
``lr[<prefix>]@<k>``, ``warmup``, ``final``, …) under the distributions of the job's space
(those of the Optuna baselines), its value, and a state: completed → COMPLETE; diverged and
failed → FAIL (Optuna keeps no value for a failed trial: a diverged run's finite value, its
spectral radius ρ and a failure's error are user attrs). The trial's metrics (for metagrad
the meta-gradient, flat and in the point's form), gradient evaluations, wall time and place
in its metagrad chain are user attrs too (non-finite numbers as null).

Where the studies go is :func:`storage_url` (the ``optuna_storage`` setting). Exporting is
incremental: :func:`export_job` adds the recorded trials numbered after the last one the
study holds (its ``metatune_trial`` user attr), so a second export adds nothing. Exports in
one process are serialised; two processes exporting one job at the same moment could both
add its newest trials.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, exc, select, text
from sqlalchemy.engine import URL, make_url

from metatune.compare import json_safe
from metatune.objectives import SearchSpace
from metatune.point import Point
from metatune.schedule import FINAL_RANGE, WARMUP_RANGE
from metatune.tuners import TrialStatus
from metatune_service import crud
from metatune_service.api.presenters import meta_gradient_public
from metatune_service.core.config import Settings
from metatune_service.core.db import Database, normalise_url
from metatune_service.models import Job, MetagradStep, Trial
from metatune_service.status import JobStatus

log = logging.getLogger("metatune.optuna")

OFF = "off"
"""The ``optuna_storage`` setting that turns the export off."""
SCHEMA = "optuna"
"""The PostgreSQL schema Optuna's tables go to by default, beside the service's in ``public``."""
TRIAL_ATTR = "metatune_trial"
"""The user attr holding the number of the recorded trial an Optuna trial stands for."""

_storages: dict[str, optuna.storages.RDBStorage] = {}
_lock = threading.RLock()


# -- where ------------------------------------------------------------------------------------------


def storage_url(settings: Settings) -> str | None:
    """Where the studies go: the ``optuna_storage`` setting (None when it is ``off``), else
    :func:`default_url` of the service's database."""
    chosen = (settings.optuna_storage or "").strip()
    if chosen:
        return None if chosen.lower() == OFF else normalise_url(chosen)
    return default_url(settings.database_url)


def default_url(database_url: str) -> str | None:
    """Optuna's storage beside the service's database, apart from its tables (both schemas
    have a table ``trials``): the file ``…/name-optuna.db`` beside a SQLite ``…/name.db``, the
    schema :data:`SCHEMA` of a PostgreSQL database; None for an in-memory SQLite database or
    another kind of database.

    Example:
        >>> default_url("sqlite:////srv/metatune.db")
        'sqlite:////srv/metatune-optuna.db'
        >>> default_url("postgresql://app@db:5432/tuning")
        'postgresql+psycopg://app@db:5432/tuning?options=-csearch_path%3Doptuna'
    """
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() == "sqlite":
        return _sibling_file(url)
    if url.get_backend_name() == "postgresql":
        return _in_schema(url, SCHEMA)
    return None


def _sibling_file(url: URL) -> str | None:
    """The SQLite URL of ``<stem>-optuna<suffix>`` beside ``url``'s file (None for memory)."""
    path = url.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    return _render(url.set(database=os.path.join(folder, f"{stem}-optuna{suffix}")))


def _in_schema(url: URL, schema: str) -> str:
    """``url`` whose connections search ``schema`` first (libpq's ``options=-csearch_path=…``,
    after any options it had)."""
    options = _options(url)
    path = f"-csearch_path={schema}"
    return _render(url.update_query_dict({"options": f"{options} {path}" if options else path}))


def _options(url: URL) -> str:
    value = url.query.get("options", "")
    return " ".join(value) if isinstance(value, tuple) else value


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """``url`` as printed and logged: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


# -- Optuna's storage -------------------------------------------------------------------------------


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, one per URL in this process (making one checks or
    creates Optuna's schema); a PostgreSQL schema named in the URL's ``search_path`` is
    created first when missing."""
    with _lock:
        cached = _storages.get(url)
        if cached is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            ensure_schema(url)
            cached = _storages[url] = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        return cached


def prepare(settings: Settings) -> str | None:
    """:func:`storage_url`, with Optuna's schema made ready there, so that ``optuna-dashboard``
    opens it before the first job has ended; a failure is logged (each export tries again)."""
    url = storage_url(settings)
    if url is not None:
        try:
            storage(url)
        except Exception:  # noqa: BLE001 - the service runs without its Optuna copy
            log.exception("the Optuna storage %s could not be prepared", shown(url))
    return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    """A busy timeout on SQLite (the worker and an export command may write at once); a
    liveness check of pooled PostgreSQL connections."""
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def ensure_schema(url: str) -> None:
    """Create the first schema of a PostgreSQL URL's ``options=-csearch_path=…`` if missing
    (Optuna creates its tables, not the schema they go to)."""
    parsed = make_url(url)
    schema = _search_path(parsed)
    if parsed.get_backend_name() != "postgresql" or schema is None:
        return
    engine = create_engine(parsed)
    try:
        with engine.begin() as connection:
            quoted = connection.dialect.identifier_preparer.quote_schema(schema)
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    except exc.IntegrityError:  # another process created it at the same moment
        pass
    finally:
        engine.dispose()


def _search_path(url: URL) -> str | None:
    """The first schema of ``-csearch_path=a,b`` in the URL's options, if any."""
    for option in _options(url).split():
        if option.startswith("-csearch_path="):
            return option.split("=", 1)[1].split(",")[0].strip('"') or None
    return None


def dispose(url: str | None = None) -> None:
    """Close and forget the storage of ``url`` (every storage when None)."""
    with _lock:
        for key in [url] if url is not None else list(_storages):
            cached = _storages.pop(key, None)
            if cached is not None:
                cached.engine.dispose()


# -- what -------------------------------------------------------------------------------------------


def study_name(job: Job | str) -> str:
    """The study of a job (or job id): ``metatune-<job id>``."""
    return f"metatune-{job if isinstance(job, str) else job.id}"


def study_attrs(job: Job) -> dict[str, Any]:
    """The study's user attrs: what the job is and whose, and where it stands."""
    return json_safe({"job_id": job.id, "objective": job.objective, "method": job.method, "seed": job.seed,
                      "owner": job.owner, "comparison_id": job.comparison_id, "status": JobStatus(job.status).value,
                      "spec": job.spec})


def distribution(name: str, space: SearchSpace) -> FloatDistribution:
    """The distribution of a flat param (:func:`~metatune.point.slot_names`), as the Optuna
    baselines search it: η (``lr…``) in the space's bounds (log-scale when the space is),
    β (``momentum…``) uniform, ``warmup`` in WARMUP_RANGE, ``final`` log-uniform in FINAL_RANGE."""
    if name == "warmup":
        return FloatDistribution(*WARMUP_RANGE)
    if name == "final":
        return FloatDistribution(*FINAL_RANGE, log=True)
    if name.startswith("lr"):
        return FloatDistribution(space.lr_low, space.lr_high, log=space.lr_log)
    return FloatDistribution(space.momentum_low, space.momentum_high)


def trial_params(point: Point, space: SearchSpace) -> tuple[dict[str, float], dict[str, FloatDistribution]]:
    """The point's flat params and their distributions; a value outside its distribution (a
    rounding error, or a metagrad step past the box) is clipped into it, so Optuna accepts
    it (the exact point is the trial's ``point`` user attr)."""
    params, distributions = {}, {}
    for name, value in point.to_params().items():
        dist = distributions[name] = distribution(name, space)
        params[name] = min(max(float(value), dist.low), dist.high) if math.isfinite(value) else dist.low
    return params, distributions


def trial_attrs(row: Trial, metrics: Mapping[str, float | None],
                chain_step: tuple[int, bool] | None = None) -> dict[str, Any]:
    """A trial's user attrs: its metrics (flat), number, status, ρ, stability, λ_max, cost,
    exact point, error, the Ray node that evaluated it (where one did), a failed trial's value,
    and for metagrad the meta-gradient in the point's form and its chain, step and acceptance;
    JSON-safe (non-finite as null)."""
    attrs: dict[str, Any] = dict(metrics)
    attrs.update({TRIAL_ATTR: row.number, "status": row.status, "spectral_radius": row.spectral_radius,
                  "stable": row.stable, "lambda_max": row.lambda_max, "gradient_evals": row.gradient_evals,
                  "cumulative_evals": row.cumulative_evals, "wall_time": row.wall_seconds, "point": row.point})
    if row.error is not None:
        attrs["error"] = row.error
    if row.node is not None:
        attrs["node"] = row.node
    if row.status != TrialStatus.COMPLETED and row.value is not None:
        attrs["value"] = row.value
    gradient = meta_gradient_public(crud.point_of(row), metrics)
    if gradient is not None:
        attrs["meta_gradient"] = gradient.model_dump()
    if row.start is not None:
        attrs["chain_start"] = row.start
    if chain_step is not None:
        attrs["chain_step"], attrs["accepted"] = chain_step
    return json_safe(attrs)


def frozen_trial(row: Trial, metrics: Mapping[str, float | None], space: SearchSpace,
                 chain_step: tuple[int, bool] | None = None) -> FrozenTrial:
    """The Optuna trial of a recorded one: COMPLETE with its value when it completed with a
    finite value, else FAIL; it ended when it was recorded and began its wall time before."""
    params, distributions = trial_params(crud.point_of(row), space)
    complete = row.status == TrialStatus.COMPLETED and row.value is not None
    ended = _local(row.created_at)
    return FrozenTrial(number=row.number, state=TrialState.COMPLETE if complete else TrialState.FAIL,
                       value=row.value if complete else None,
                       datetime_start=ended - timedelta(seconds=max(row.wall_seconds or 0.0, 0.0)),
                       datetime_complete=ended, params=params, distributions=distributions,
                       user_attrs=trial_attrs(row, metrics, chain_step), system_attrs={}, intermediate_values={},
                       trial_id=0)


def _local(moment: datetime) -> datetime:
    """A stored UTC time as Optuna keeps its own: naive, in local time (SQLite's are naive UTC)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return aware.astimezone().replace(tzinfo=None)


# -- export -----------------------------------------------------------------------------------------


def export_job(db: Database, target: Settings | str | None, job_id: str) -> int:
    """Write the job's study to ``target`` (settings, or a storage URL; None: nothing) and add
    its recorded trials the study lacks; returns how many were added (0 when up to date).

    Raises:
        KeyError: no job ``job_id``.
    """
    url = storage_url(target) if isinstance(target, Settings) else target
    if url is None:
        return 0
    job = crud.get_job(db, job_id=job_id)
    if job is None:
        raise KeyError(f"no job {job_id!r}")
    with _lock:
        study = _study(url, job)
        last = _last_exported(storage(url), study)
        rows = crud.list_trials(db, job_id=job.id, after=last, limit=10**9)
        if rows:
            metrics = crud.trial_metrics(db, trial_ids=[r.id for r in rows])
            steps, space = _chain_steps(db, job.id, last), _space(job)
            study.add_trials([frozen_trial(r, metrics[r.id], space, steps.get(r.number)) for r in rows])
    return len(rows)


def export_jobs(db: Database, target: Settings | str | None, job_ids: Iterable[str] | None = None) -> tuple[int, int]:
    """:func:`export_job` for each of ``job_ids`` (None: every job that has started, oldest
    first); returns (studies written, trials added)."""
    ids = list(job_ids) if job_ids is not None else _started_jobs(db)
    return len(ids), sum(export_job(db, target, job_id) for job_id in ids)


def _study(url: str, job: Job) -> optuna.Study:
    """The job's study, created when missing, its user attrs brought up to date."""
    study = optuna.create_study(storage=storage(url), study_name=study_name(job), direction="minimize",
                                load_if_exists=True)
    current = study.user_attrs
    for key, value in study_attrs(job).items():
        if current.get(key) != value:
            study.set_user_attr(key, value)
    return study


def _last_exported(store: optuna.storages.BaseStorage, study: optuna.Study) -> int:
    """The number of the last recorded trial in the study (-1 when it has none), read from
    its last trial alone (trials are added in number order)."""
    study_id = store.get_study_id_from_name(study.study_name)
    count = store.get_n_trials(study_id)
    if count == 0:
        return -1
    last = store.get_trial(store.get_trial_id_from_study_id_trial_number(study_id, count - 1))
    return int(last.user_attrs.get(TRIAL_ATTR, last.number))


def _space(job: Job) -> SearchSpace:
    """The job's search box (a job stored without one: its objective's)."""
    spec = job.tuning_job()
    return spec.space if spec.space is not None else spec.build_objective().space


def _chain_steps(db: Database, job_id: str, after: int) -> dict[int, tuple[int, bool]]:
    """Trial number → (step within its metagrad chain, accepted) for trials after ``after``."""
    query = (select(MetagradStep.trial_number, MetagradStep.step, MetagradStep.accepted)
             .where(MetagradStep.job_id == job_id, MetagradStep.trial_number > after))
    with db.read() as session:
        return {number: (step, accepted) for number, step, accepted in session.execute(query)}


def _started_jobs(db: Database) -> list[str]:
    """Every job that has left the queue (or ended in it), oldest first."""
    query = select(Job.id).where(Job.status != JobStatus.QUEUED).order_by(Job.created_at, Job.id)
    with db.read() as session:
        return list(session.scalars(query))


class JobExport:
    """A job's study while a worker runs it: :meth:`tick` after each write of trials exports
    at most every ``every`` seconds (a failure is logged once and ends the live export);
    :meth:`final`, once the job has ended, exports the rest. Neither raises: the study is a
    copy, and the job's outcome never depends on it."""

    def __init__(self, db: Database, settings: Settings, job_id: str, every: float = 5.0) -> None:
        self.db, self.job_id, self.every = db, job_id, every
        self.url = storage_url(settings)
        self.live = self.url is not None
        self.exported_at = time.monotonic()

    def tick(self) -> None:
        if not self.live or time.monotonic() - self.exported_at < self.every:
            return
        self.exported_at = time.monotonic()
        self.live = self._export()

    def final(self) -> None:
        if self.url is not None:
            self._export()

    def _export(self) -> bool:
        try:
            export_job(self.db, self.url, self.job_id)
            return True
        except Exception:  # noqa: BLE001 - logged; the job's results stand in the service's database
            log.exception("job %s: its Optuna study could not be written to %s", self.job_id, shown(self.url))
            return False


__all__ = ["JobExport", "OFF", "SCHEMA", "TRIAL_ATTR", "default_url", "dispose", "distribution", "ensure_schema",
           "export_job", "export_jobs", "frozen_trial", "prepare", "shown", "storage", "storage_url", "study_attrs",
           "study_name", "trial_attrs", "trial_params"]
