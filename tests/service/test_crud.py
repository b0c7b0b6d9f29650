"""The data layer's claims and leases: one worker per job, expired leases reclaimed, a job
that keeps failing given up after max_attempts."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from datetime import datetime, timedelta, timezone

from metatune.job import TuningJob
from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.worker import Worker

from .conftest import FakeClock

SPEC = TuningJob("quadratic", "tpe", budget=31.0)


def test_concurrent_workers_claim_each_job_exactly_once(migrated):
    crud.create_jobs(migrated, owner="alice", specs=[SPEC.with_changes(seed=s) for s in range(40)])

    def claim_all(worker: str) -> list[str]:
        got = []
        while (job := crud.claim_job(migrated, worker=worker, lease_seconds=60, max_attempts=3)) is not None:
            got.append(job.id)
        return got

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(claim_all, [f"w{i}" for i in range(8)]))
    every = [job for jobs in claimed for job in jobs]
    assert len(every) == 40 and len(set(every)) == 40


def test_an_expired_lease_is_reclaimed_and_a_job_is_given_up_after_max_attempts(migrated):
    clock = FakeClock()
    lease = {"lease_seconds": 10, "max_attempts": 2, "clock": clock}
    [job] = crud.create_jobs(migrated, owner="alice", specs=[SPEC]).jobs
    assert crud.claim_job(migrated, worker="a", **lease).id == job.id
    clock.advance(9)
    assert crud.claim_job(migrated, worker="b", **lease) is None  # a's lease holds
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=10, clock=clock) is False
    clock.advance(9)
    assert crud.claim_job(migrated, worker="b", **lease) is None  # renewed: it holds 10 s from the heartbeat
    clock.advance(2)
    again = crud.claim_job(migrated, worker="b", **lease)
    assert again.id == job.id and again.attempts == 2 and again.lease_holder == "b"
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=10, clock=clock) is None  # lost
    clock.advance(11)
    assert crud.claim_job(migrated, worker="c", **lease) is None
    gave_up = crud.get_job(migrated, job_id=job.id)
    assert gave_up.status == "failed" and "gave up after 2 attempts" in gave_up.error


def test_a_cancel_request_reaches_the_heartbeat(migrated):
    [job] = crud.create_jobs(migrated, owner="alice", specs=[SPEC]).jobs
    crud.claim_job(migrated, worker="a", lease_seconds=60, max_attempts=3)
    assert crud.request_cancel(migrated, job_id=job.id).status == "running"
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=60) is True



def lease_keeper(migrated, clock: FakeClock,
                 name: str) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """Worker ``name``'s lease loop for the job it claims, polling every 10 ms (real time),
    its lease timed by ``clock``; returned once the loop has read the clock."""
    settings = Settings(database_url="sqlite://", lease_seconds=30, heartbeat_seconds=5, poll_seconds=0.01)
    job = crud.claim_job(migrated, worker=name, lease_seconds=30, max_attempts=3, clock=clock)
    cancel, done = threading.Event(), threading.Event()
    worker = Worker(migrated, settings, name=name, clock=clock)
    reads = clock.reads
    thread = threading.Thread(target=worker.keep_lease, args=(job.id, cancel, done), daemon=True)
    thread.start()
    wait_until(lambda: clock.reads > reads)
    return thread, cancel, done


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def instant(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # SQLite's are naive UTC


def test_a_worker_renews_its_lease_as_its_clock_passes_the_heartbeat_interval(migrated):
    clock = FakeClock()
    [job] = crud.create_jobs(migrated, owner="alice", specs=[SPEC]).jobs
    thread, cancel, done = lease_keeper(migrated, clock, "a")
    try:
        for _ in range(10):  # 100 s of heartbeats every 10 s, over a 30 s lease
            clock.advance(10)
            expected = clock() + timedelta(seconds=30)
            wait_until(lambda: instant(crud.get_job(migrated, job_id=job.id).lease_expires) == expected)
            assert crud.claim_job(migrated, worker="b", lease_seconds=30, max_attempts=3, clock=clock) is None
        assert not cancel.is_set()
    finally:
        done.set()
        thread.join(timeout=30)


def test_a_worker_whose_lease_was_taken_stops_its_run_at_its_next_heartbeat(migrated):
    clock, later = FakeClock(), FakeClock()
    [job] = crud.create_jobs(migrated, owner="alice", specs=[SPEC]).jobs
    thread, cancel, done = lease_keeper(migrated, clock, "a")
    try:
        later.now = clock() + timedelta(seconds=31)  # b's time: a's lease has expired (a stalled)
        taken = crud.claim_job(migrated, worker="b", lease_seconds=30, max_attempts=3, clock=later)
        assert taken.id == job.id and taken.lease_holder == "b"
        time.sleep(0.1)  # ten of a's polls: no heartbeat is due by a's clock, so a runs on
        assert not cancel.is_set()
        clock.advance(5)  # a's heartbeat is due; its lease is 25 s from running out by its own clock
        assert cancel.wait(timeout=30)
        assert crud.get_job(migrated, job_id=job.id).lease_holder == "b"
    finally:
        done.set()
        thread.join(timeout=30)


def test_reads_see_each_commit_and_a_connection_closed_while_idle_is_replaced(migrated):
    """A read session is in autocommit: a job committed by another session is seen by the next
    statement. A pooled PostgreSQL connection the server closed while it sat idle (a restart)
    fails its ping at checkout and is replaced, so the read that gets it does not fail."""
    import pytest
    from sqlalchemy import text

    from metatune_service.core.db import PING_AFTER_IDLE_SECONDS

    [job] = crud.create_jobs(migrated, owner="alice", specs=[SPEC]).jobs
    with migrated.read() as session:
        assert session.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        crud.create_jobs(migrated, owner="alice", specs=[SPEC.with_changes(seed=1)])
        assert session.execute(text("SELECT count(*) FROM jobs")).scalar() == 2
    if migrated.is_sqlite:
        pytest.skip("SQLite has no server to close a connection")
    import psycopg

    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
    name = migrated.engine.url.database
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
        closed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                               (name,)).fetchone()[0]
    assert closed >= 1
    assert crud.get_job(migrated, job_id=job.id).id == job.id
