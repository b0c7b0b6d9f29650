"""The job worker: claim a queued job, hold its lease by heartbeats, run it through
``metatune.distributed``, and write its trials as they arrive through one writer; once a
comparison's last job has ended, build its table and plots (:mod:`metatune_service.comparisons`).

A worker that dies loses its lease; another worker claims the job again and resumes it
(its recorded trials are kept and replayed into the method, not run again). A job that
fails on every attempt up to ``max_attempts`` is marked failed with its error. A cancel
request reaches the run through the heartbeat (Ray stops within a second of it). Each job is
also written into its Optuna study (:mod:`metatune_service.optuna_storage`) as it runs and
when it ends; a failure there is logged and changes nothing of the job.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from datetime import timedelta
from typing import Any, Callable

from metatune.tuners.base import Trial as LibraryTrial
from metatune_service import comparisons, crud, optuna_storage
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.models import Clock, Job, utcnow
from metatune_service.status import JobStatus

log = logging.getLogger("metatune.worker")


class LeaseLost(RuntimeError):
    """Another worker holds this job now (this one was presumed dead)."""


class JobWriter:
    """The one path a job's trials take into the database: buffered, written in batches of
    ``batch`` or every ``interval`` seconds, each batch one transaction; ``on_write`` is called
    after each batch is written."""

    def __init__(self, db: Database, job_id: str, worker: str, batch: int = 32, interval: float = 0.25,
                 on_write: Callable[[], None] | None = None) -> None:
        self.db, self.job_id, self.worker, self.on_write = db, job_id, worker, on_write
        self.batch, self.interval = batch, interval
        self.buffer: list[LibraryTrial] = []
        self.flushed_at = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, trial: LibraryTrial) -> None:
        with self.lock:
            self.buffer.append(trial)
            due = len(self.buffer) >= self.batch or time.monotonic() - self.flushed_at >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            trials, self.buffer = self.buffer, []
            self.flushed_at = time.monotonic()
        if not trials:
            return
        lambda_max = trials[0].lambda_max if math.isfinite(trials[0].lambda_max) else None
        if not crud.write_trials(self.db, job_id=self.job_id, worker=self.worker, trials=trials, lambda_max=lambda_max):
            raise LeaseLost(f"job {self.job_id} is no longer held by {self.worker}")
        if self.on_write is not None:
            self.on_write()


class Worker:
    """Claims and runs jobs until ``stop`` is set; builds comparisons' tables when their last
    job ends (after running it) or when idle (a comparison whose last open job was cancelled
    in the queue, or whose builder died). Leases are timed by ``clock``."""

    def __init__(self, db: Database, settings: Settings, name: str | None = None,
                 clock: Clock = utcnow) -> None:
        self.db, self.settings, self.clock = db, settings, clock
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.failed_builds: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            job = crud.claim_job(self.db, worker=self.name, lease_seconds=self.settings.lease_seconds,
                                 max_attempts=self.settings.max_attempts, clock=self.clock)
            if job is None:
                self.build_comparisons()
                stop.wait(self.settings.poll_seconds)
                continue
            self.execute(job, stop)
            if job.comparison_id is not None and not stop.is_set():
                self.build_comparison(job.comparison_id)

    def build_comparisons(self) -> None:
        """Build the tables of comparisons whose jobs all ended at least a lease ago (time for
        the worker that ended the last one to build it) and that still have none."""
        ended_before = self.clock() - timedelta(seconds=self.settings.lease_seconds)
        for comparison_id in crud.comparisons_to_build(self.db, ended_before=ended_before):
            if comparison_id not in self.failed_builds:
                self.build_comparison(comparison_id)

    def build_comparison(self, comparison_id: str) -> None:
        """Build the comparison's table and plots if its jobs have all ended (a build that
        fails is logged and not tried again by this worker)."""
        try:
            if comparisons.build(self.db, self.settings, comparison_id):
                log.info("built the table and plots of comparison %s", comparison_id)
        except Exception:  # noqa: BLE001 - the jobs' results stand; the table is what is missing
            log.exception("comparison %s: its table could not be built", comparison_id)
            self.failed_builds.add(comparison_id)

    def execute(self, job: Job, stop: threading.Event | None = None) -> None:
        """Run one claimed job to its end (succeeded, cancelled, failed or released); its Optuna
        study is written as it runs and once it has ended (:class:`optuna_storage.JobExport`)."""
        cancel, done = threading.Event(), threading.Event()
        beat = threading.Thread(target=self.keep_lease, args=(job.id, cancel, done, stop), daemon=True)
        beat.start()
        export = optuna_storage.JobExport(self.db, self.settings, job.id)
        writer = JobWriter(self.db, job.id, self.name, on_write=export.tick)
        try:
            result = self._run(job, writer, cancel)
            writer.flush()
            if result.cancelled and stop is not None and stop.is_set():  # the worker stops, not the job
                crud.release_job(self.db, job_id=job.id, worker=self.name, error=None)
            else:
                crud.finish_job(self.db, job_id=job.id, worker=self.name, clock=self.clock,
                                status=JobStatus.CANCELLED if result.cancelled else JobStatus.SUCCEEDED)
                export.final()
        except Exception as error:  # noqa: BLE001 - recorded on the job, which is retried or failed
            if _caused_by(error, LeaseLost):  # Ray wraps errors raised in its callbacks
                log.warning("lost the lease of job %s", job.id)
                return
            message = f"{type(error).__name__}: {error}"
            log.error("job %s attempt %d failed: %s\n%s", job.id, job.attempts, message, traceback.format_exc())
            try:
                writer.flush()
            except Exception:  # noqa: BLE001 - the attempt failed already; its error is what matters
                pass
            if job.attempts >= self.settings.max_attempts or isinstance(error, ValueError):
                crud.finish_job(self.db, job_id=job.id, worker=self.name, status=JobStatus.FAILED,
                                error=message, clock=self.clock)
                export.final()
            else:
                crud.release_job(self.db, job_id=job.id, worker=self.name, error=message)
        finally:
            done.set()
            beat.join()

    def _run(self, job: Job, writer: JobWriter, cancel: threading.Event) -> Any:
        from metatune import distributed

        history = crud.library_trials(self.db, job_id=job.id) if job.attempts > 1 else []
        return distributed.run(job.tuning_job(), callback=writer, cancel=cancel, ray_address=self.settings.ray_address,
                               storage=self.settings.output_dir / "ray", history=history)

    def keep_lease(self, job_id: str, cancel: threading.Event, done: threading.Event,
                   stop: threading.Event | None = None) -> None:
        """Until ``done``: poll for a cancel request every ``poll_seconds``; renew the lease
        once ``heartbeat_seconds`` have passed by ``clock``; set ``cancel`` when a cancel is
        requested, the worker stops, or the lease is lost or has run out unrenewed."""
        renewed = attempted = self.clock()
        while not done.wait(self.settings.poll_seconds):
            try:
                if (stop is not None and stop.is_set()) or crud.cancel_requested(self.db, job_id=job_id):
                    cancel.set()
                if (self.clock() - attempted).total_seconds() >= self.settings.heartbeat_seconds:
                    attempted = self.clock()
                    if crud.heartbeat(self.db, job_id=job_id, worker=self.name,
                                      lease_seconds=self.settings.lease_seconds, clock=self.clock) is None:
                        cancel.set()
                    renewed = attempted
            except Exception as error:  # noqa: BLE001 - a database hiccup: retry, unless the lease ran out
                log.warning("heartbeat of job %s failed: %s", job_id, error)
            if (self.clock() - renewed).total_seconds() > self.settings.lease_seconds:
                cancel.set()  # another worker may hold the job now: stop running it here


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` or any exception in its cause/context chain is a ``kind``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def start_embedded(db: Database, settings: Settings) -> tuple[threading.Thread, threading.Event]:
    """A worker thread inside the API process (``metatune serve``'s default)."""
    stop = threading.Event()
    thread = threading.Thread(target=Worker(db, settings).run, args=(stop,), name="metatune-worker", daemon=True)
    thread.start()
    return thread, stop
