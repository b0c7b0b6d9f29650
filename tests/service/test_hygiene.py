"""Resource hygiene of a real ``metatune serve``: after a warm-up, many requests and jobs leave
its open file descriptors, database connections and processes no higher than they were, and its
resident memory within 10 %. Bounded versions of ``examples/service_hygiene.py`` (whose full
run, 500 jobs after 50, is the figure in RELIABILITY.md)."""

from __future__ import annotations

import importlib.util
import secrets
import time
from pathlib import Path

import httpx
import pytest

from metatune_service.api.deps import SESSION_COOKIE
from metatune_service.core.db import POOL_SIZE

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "service_hygiene.py"
RSS_GROWTH = 0.10
OPTUNA_CONNECTIONS = 1
"""The worker writes each job's Optuna study through one connection of Optuna's storage."""


@pytest.fixture(scope="module")
def hygiene():
    """The example's module: its server, snapshots and job runs are what the tests use."""
    spec = importlib.util.spec_from_file_location("service_hygiene", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def requests_round(client: httpx.Client, url: str, token: str) -> None:
    """One of each request the API serves, successful and failing: submit, read, list, trials,
    cancel, the event stream of the cancelled job to its end, the dashboard's data and page,
    an unknown job, a bad spec and a wrong token."""
    job = client.post("/v1/jobs", json={"objective": "quadratic", "method": "random",
                                        "budget": {"inner_steps": 5, "trials": 1}})
    job_id = job.json()["id"]
    codes = [job.status_code]
    for method, path in (("GET", f"/v1/jobs/{job_id}"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}/trials"),
                         ("POST", f"/v1/jobs/{job_id}/cancel"), ("GET", f"/v1/jobs/{job_id}/events"),
                         ("GET", "/v1/objectives"), ("GET", f"/ui/data/jobs/{job_id}"),
                         ("GET", f"/v1/jobs/{secrets.token_hex(16)}"), ("POST", "/v1/jobs")):
        codes.append(client.request(method, path, json={"objective": "nope", "method": "random"}
                                    if method == "POST" and path == "/v1/jobs" else None,
                                    headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code)
    codes.append(httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code)
    assert codes == [202, 200, 200, 200, 200, 200, 200, 200, 404, 422, 401], codes


def test_the_api_holds_steady_under_many_requests(hygiene, database_url, tmp_path):
    """An API-only server (no worker: nothing but requests): after 15 rounds of every kind of
    request, 60 more leave its fds, database connections and processes as they were and its
    RSS within 10 % (a session, stream or connection kept per request would show here)."""
    token = secrets.token_urlsafe(24)
    server, url = hygiene.start_server(tmp_path, database_url, f"hygiene:{token}", worker=False)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            for _ in range(15):
                requests_round(client, url, token)
            start = hygiene.snapshot(server.pid, database_url)
            time.sleep(1)
            start = hygiene.snapshot(server.pid, database_url)
            for _ in range(60):
                requests_round(client, url, token)
            end = hygiene.settled(server.pid, database_url, 0.0, back_to=start)
    finally:
        hygiene.stop(server)
    print(f"API, 60 rounds after 15 on {database_url.split(':')[0]}: {start} -> {end}")
    assert all(end[k] <= start[k] for k in hygiene.STEADY), (start, end)
    assert start["connections"] >= 1
    assert (end["rss_kib"] - start["rss_kib"]) / start["rss_kib"] <= RSS_GROWTH, (start, end)


@pytest.mark.slow
def test_a_server_running_jobs_returns_to_where_it_started(hygiene, tmp_path):
    """``metatune serve`` with its worker and Ray: 2 jobs warm it up, 4 more (each a Ray Tune run,
    ≈ 8 s on 2 busy cores, most of it starting the trial's actor) leave its fds, database
    connections and child processes no higher than they were and its RSS within 10 %."""
    result = hygiene.measure(jobs=4, warmup=2, workdir=tmp_path)
    start, end = result["start"], result["end"]
    print(f"jobs: 4 after 2: {start} -> {end}, {result['seconds']:.1f} s")
    assert result["statuses"].get("succeeded") == 4, result["statuses"]
    # Ray's worker pool and the standing experiment's parked actors may end between the
    # snapshots (a parked trial's actor, an idle worker Ray reaps): fewer is not a leak.
    assert end["processes"] <= start["processes"], (start, end)
    # The pools (reads and writes) may still open connections up to their size after the
    # warm-up (the jobs' reads and writes overlap differently from one run to the next): growth
    # up to the bound is not a leak, and each such connection holds only its database files
    # (the file, -wal, -shm).
    opened = end["connections"] - start["connections"]
    assert end["connections"] <= max(start["connections"], 2 * POOL_SIZE + OPTUNA_CONNECTIONS), (start, end)
    assert end["fds"] - start["fds"] <= 3 * max(opened, 0), (start, end)
    assert start["processes"] >= 1 and start["connections"] >= 1
    assert result["rss_growth"] <= RSS_GROWTH, (start, end)
