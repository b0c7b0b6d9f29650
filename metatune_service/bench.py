"""``metatune bench service``: the REST service under load on loopback.

A real ``metatune serve --no-worker`` process per database (a SQLite file in WAL mode, and
PostgreSQL at ``--postgres`` when it answers); first one client, then 50 concurrent
clients (asyncio + httpx, in this process, on the same 2 cores as the server) submit
jobs (latency p50/p99 per request), then read jobs by id for a fixed time (requests per
second). With N clients in a closed loop, latency ≈ N / throughput (Little's law). Metric ingestion: trials with their metrics written through the
worker's batched write path, rows per second. Counts and durations are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metatune.bench.common import machine, write_json

NAME, HELP = "service", "REST submission latency, read throughput and metric ingestion on SQLite and PostgreSQL"
TOKEN = "bench-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--read-seconds", type=float, default=10.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL server to create a scratch database on ('' to skip)")


def start_server(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_API_TOKENS": f"bench:{TOKEN}",
           "METATUNE_MAX_GRADIENT_EVALS": "1e9"}
    return subprocess.Popen([sys.executable, "-m", "metatune.cli", "serve", "--no-worker", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _load(base: str, clients: int, submissions: int, read_seconds: float) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        for _ in range(300):
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        spec = {"objective": "quadratic", "method": "tpe", "budget": {"trials": 10}}
        latencies, ids, errors = [], [], 0
        queue = iter(range(submissions))

        async def submitter() -> None:
            nonlocal errors
            for seed in queue:
                began = time.perf_counter()
                response = await client.post("/v1/jobs", json={**spec, "seed": seed})
                latencies.append(time.perf_counter() - began)
                if response.status_code == 202:
                    ids.append(response.json()["id"])
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(clients)))
        submit_wall = time.perf_counter() - began
        reads, stop_at = 0, time.perf_counter() + read_seconds

        async def reader(offset: int) -> None:
            nonlocal reads, errors
            i = offset
            while time.perf_counter() < stop_at:
                response = await client.get(f"/v1/jobs/{ids[i % len(ids)]}")
                reads += 1
                errors += response.status_code != 200
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(reader(k) for k in range(clients)))
        read_wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {"submissions": len(latencies), "submit_p50_ms": float(np.percentile(lat, 50)),
            "submit_p99_ms": float(np.percentile(lat, 99)), "submit_per_s": len(latencies) / submit_wall,
            "reads": reads, "reads_per_s": reads / read_wall, "errors": errors}


def ingestion(url: str, trials: int = 2000, batch: int = 32) -> float:
    """Rows (trials + their metrics) per second through :func:`metatune_service.crud.write_trials`."""
    from metatune.job import TuningJob
    from metatune.point import MetaGradient, Point
    from metatune.tuners import ChainStep, Trial
    from metatune_service import crud
    from metatune_service.core.db import Database

    db = Database(url)
    crud.create_jobs(db, owner="bench", specs=[TuningJob("quadratic", "metagrad", budget=1.0)])
    job = crud.claim_job(db, worker="bench", lease_seconds=600, max_attempts=5)  # the oldest queued job
    gradient = MetaGradient((1.0,), (2.0,), growth_rate=0.1, amplification=3.0)
    metrics = {"final_train_loss": 0.5, **gradient.to_metrics()}
    rows = [Trial(n, Point.scalar(0.1, 0.9), 1.0 / (n + 1), False, 31.0, 31.0 * (n + 1), 0.01, 0.9, True, metrics,
                  chain=ChainStep(0, True, gradient)) for n in range(trials)]
    began = time.perf_counter()
    for first in range(0, trials, batch):
        if not crud.write_trials(db, job_id=job.id, worker="bench", trials=rows[first:first + batch], lambda_max=100.0):
            raise RuntimeError("the bench lost its job's lease: nothing was written")
    wall = time.perf_counter() - began
    assert len(crud.list_trials(db, job_id=job.id, limit=trials + 1)) == trials
    db.dispose()
    return trials * (1 + len(metrics)) / wall


def main(args: argparse.Namespace) -> int:
    from metatune_service.core.migrations import upgrade

    print(f"{machine()}; {args.clients} concurrent clients on loopback, {args.submissions} submissions, "
          f"reads for {args.read_seconds:g} s")
    databases = [("SQLite (WAL)", f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}")]
    if args.postgres:
        name = _scratch_postgres(args.postgres)
        if name:
            databases.append(("PostgreSQL", args.postgres.rsplit("/", 1)[0] + f"/{name}"))
    print("| database | clients | submit p50 ms | submit p99 ms | submissions/s | reads/s | errors | ingestion rows/s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for label, url in databases:
        upgrade(url)
        port = _free_port()
        server = start_server(url, port)
        try:
            loads = [(clients, asyncio.run(_load(f"http://127.0.0.1:{port}", clients, submissions, args.read_seconds)))
                     for clients, submissions in ((1, 200), (args.clients, args.submissions))]
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        ingest = ingestion(url)
        for clients, figures in loads:
            figures.update(database=label, clients=clients, ingestion_rows_per_s=ingest)
            rows.append(figures)
            print(f"| {label} | {clients} | {figures['submit_p50_ms']:.1f} | {figures['submit_p99_ms']:.1f} | "
                  f"{figures['submit_per_s']:.0f} | {figures['reads_per_s']:.0f} | {figures['errors']} | {ingest:.0f} |")
    write_json(rows, args.json)
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def _scratch_postgres(url: str) -> str | None:
    try:
        import psycopg

        name = f"metatune_bench_{os.getpid()}"
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
        return name
    except Exception as error:  # noqa: BLE001 - reported, and the SQLite figures still printed
        print(f"(PostgreSQL skipped: {error})")
        return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



