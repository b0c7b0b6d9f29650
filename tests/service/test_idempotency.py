"""Submissions under concurrency and retries, on SQLite and PostgreSQL, through a live server:
200 concurrent submissions store exactly 200 jobs; an ``Idempotency-Key`` makes a retried
POST return the first job (or comparison) instead of a new one, per owner; a key reused for
another request gets a 409; two identical retries racing make one job."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from sqlalchemy import func, select

from metatune.job import TuningJob
from metatune_service import crud
from metatune_service.models import Comparison, Job

SPEC = {"objective": "quadratic", "method": "random", "budget": {"trials": 2, "inner_steps": 5}}
CONCURRENT = 200


def stored_jobs(served, owner: str = "alice") -> list[str]:
    with served.db.read() as session:
        return list(session.scalars(select(Job.id).where(Job.owner == owner)))


async def submit_all(url: str, bodies: list[dict], keys: list[str | None]) -> list[httpx.Response]:
    """Every body POSTed at once, each with its key (None: no header)."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer token-alice"}, limits=limits,
                                 timeout=120) as client:
        return await asyncio.gather(*(
            client.post("/v1/jobs", json=body, headers={} if key is None else {"Idempotency-Key": key})
            for body, key in zip(bodies, keys)))


def test_concurrent_submissions_store_each_job_once(served):
    bodies = [{**SPEC, "seed": seed} for seed in range(CONCURRENT)]
    answers = asyncio.run(submit_all(served.url, bodies, [None] * CONCURRENT))
    assert [a.status_code for a in answers] == [202] * CONCURRENT
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == CONCURRENT
    assert sorted(stored_jobs(served)) == sorted(ids)
    assert sorted(a.json()["seed"] for a in answers) == list(range(CONCURRENT))


def test_concurrent_retries_with_keys_make_one_job_per_key(served):
    """Each submission sent twice at once with its key (a client retrying a request whose answer
    it did not see): 400 requests, 200 jobs, both answers of a key naming the same job."""
    bodies = [{**SPEC, "seed": seed} for seed in range(CONCURRENT)] * 2
    keys = [f"key-{seed}" for seed in range(CONCURRENT)] * 2
    answers = asyncio.run(submit_all(served.url, bodies, keys))
    assert [a.status_code for a in answers] == [202] * 2 * CONCURRENT
    ids = [a.json()["id"] for a in answers]
    assert ids[:CONCURRENT] == ids[CONCURRENT:]
    assert len(set(ids)) == CONCURRENT
    assert sorted(stored_jobs(served)) == sorted(set(ids))


def test_a_retry_returns_the_first_job_and_another_body_gets_409(served):
    alice, bob = served.client("alice"), served.client("bob")
    first = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})
    again = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()  # the job as stored (its id, time and defaults)
    assert alice.post(f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
    cancelled = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})
    assert cancelled.json()["id"] == first.json()["id"] and cancelled.json()["status"] == "cancelled"  # as it is now
    other = alice.post("/v1/jobs", json={**SPEC, "seed": 1}, headers={"Idempotency-Key": "retry-1"})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    assert "Idempotency-Key" in other.json()["detail"]
    by_bob = bob.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-1"})  # keys are per owner
    assert by_bob.status_code == 202 and by_bob.json()["id"] != first.json()["id"]
    fresh = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "retry-2"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]
    plain = [alice.post("/v1/jobs", json=SPEC).json()["id"] for _ in range(2)]  # no key: a job per POST
    assert len(set(plain)) == 2
    assert sorted(stored_jobs(served)) == sorted([first.json()["id"], fresh.json()["id"], *plain])
    assert stored_jobs(served, "bob") == [by_bob.json()["id"]]


def test_a_key_is_checked_before_use(served):
    alice = served.client("alice")
    for key in ("", "x" * 201, "with space", "é"):
        answer = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": key.encode("utf-8")})
        assert answer.status_code == 422, key
    assert stored_jobs(served) == []


def test_a_comparison_retried_with_its_key_is_the_first_one(served):
    alice = served.client("alice")
    body = {"objective": "quadratic", "methods": ["random", "tpe"], "seeds": 2,
            "budget": {"trials": 2, "inner_steps": 5}}
    first = alice.post("/v1/comparisons", json=body, headers={"Idempotency-Key": "cmp-1"})
    again = alice.post("/v1/comparisons", json=body, headers={"Idempotency-Key": "cmp-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert sorted(j["id"] for j in again.json()["jobs"]) == sorted(j["id"] for j in first.json()["jobs"])
    other = alice.post("/v1/comparisons", json={**body, "seeds": 3}, headers={"Idempotency-Key": "cmp-1"})
    assert other.status_code == 409
    job_key = alice.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "cmp-1"})  # jobs: their own keys
    assert job_key.status_code == 202
    with served.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 1
    assert len(stored_jobs(served)) == 4 + 1


def test_the_openapi_document_declares_the_key_and_the_409(served):
    document = served.client("alice").get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/comparisons"):
        operation = document["paths"][path]["post"]
        assert "409" in operation["responses"], path
        assert "Idempotency-Key" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}, path


def test_two_identical_submissions_racing_in_the_data_layer_make_one_job(migrated):
    """Threads submitting one key at once: every one gets the same job (the losers of the race
    read back the winner's), and a different request with that key is refused."""
    spec = TuningJob("quadratic", "random", budget=12.0, steps=5)
    results, barrier = [], threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        [job] = crud.create_jobs(migrated, owner="alice", specs=[spec], idempotency_key="race").jobs
        results.append(job.id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 8 and len(set(results)) == 1
    with migrated.read() as session:
        assert list(session.scalars(select(Job.id))) == results[:1]
    with pytest.raises(crud.IdempotencyConflict):
        crud.create_jobs(migrated, owner="alice", specs=[spec.with_changes(seed=1)], idempotency_key="race")
