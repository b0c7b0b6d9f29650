"""The data layer's claims and leases: one worker per job, expired leases reclaimed, a job
that keeps failing given up after max_attempts."""

from __future__ import annotations

import concurrent.futures
import time

from metatune_service import crud

SPEC = {"method": "tpe", "objective": "quadratic", "seed": 0, "budget": {"gradient_evals": 31.0}}


def test_concurrent_workers_claim_each_job_exactly_once(migrated):
    crud.create_jobs(migrated, owner="alice", specs=[{**SPEC, "seed": s} for s in range(40)])

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
    (job,), _ = crud.create_jobs(migrated, owner="alice", specs=[SPEC])
    assert crud.claim_job(migrated, worker="a", lease_seconds=0.2, max_attempts=2).id == job.id
    assert crud.claim_job(migrated, worker="b", lease_seconds=0.2, max_attempts=2) is None  # a's lease holds
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=0.2) is False
    time.sleep(0.3)
    again = crud.claim_job(migrated, worker="b", lease_seconds=0.2, max_attempts=2)
    assert again.id == job.id and again.attempts == 2 and again.lease_holder == "b"
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=0.2) is None  # a lost it
    time.sleep(0.3)
    assert crud.claim_job(migrated, worker="c", lease_seconds=0.2, max_attempts=2) is None
    gave_up = crud.get_job(migrated, job_id=job.id)
    assert gave_up.status == "failed" and "gave up after 2 attempts" in gave_up.error


def test_a_cancel_request_reaches_the_heartbeat(migrated):
    (job,), _ = crud.create_jobs(migrated, owner="alice", specs=[SPEC])
    crud.claim_job(migrated, worker="a", lease_seconds=60, max_attempts=3)
    assert crud.request_cancel(migrated, job_id=job.id).status == "running"
    assert crud.heartbeat(migrated, job_id=job.id, worker="a", lease_seconds=60) is True
