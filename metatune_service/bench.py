"""``metatune bench service``: the REST service under open-loop load on loopback.

Per database (a SQLite file in WAL mode, and a scratch database on the PostgreSQL server at
``--postgres`` when it answers): a real ``metatune serve --no-worker`` process and a
``metatune worker`` process that runs the submitted jobs (on Ray). Then:

* **open loop**: requests arrive on a fixed schedule at ``--rate`` per second (Poisson or
  evenly spaced), each sent at its scheduled time whether earlier ones finished or not, and
  its latency measured from that time (a closed loop of N clients would measure only
  N / throughput, Little's law). The mix is reads (``GET /v1/jobs/{id}``,
  ``GET /v1/jobs/{id}/trials``, ``GET /v1/jobs``), event streams (``GET /v1/jobs/{id}/events``
  read until the job ends or ``--stream-seconds``; latency to the first event) and
  submissions (``POST /v1/jobs`` of small random-search jobs, each with its own
  ``Idempotency-Key``, retried once with it after a transport error);
* **integrity**: the submitted ids against the database (lost, or stored without a
  submission), and every job's trial numbers unique and contiguous from 0;
* **saturation**: the worker stopped, a closed loop of ``--clients`` clients reading
  ``GET /v1/jobs/{id}`` as fast as the server answers (requests per second);
* **ingestion**: trials with their metrics through the worker's batched write path (rows/s).

The generator (asyncio + httpx) shares the machine's cores with the server and the worker.
Every phase is bounded in time; the processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from metatune import checks
from metatune.bench.common import machine, write_json
from metatune.errors import InvalidArgumentError
from metatune_service.cli import MAX_PROCESSES

NAME, HELP = "service", "REST service under open-loop load: latency per endpoint, integrity, saturation, ingestion"
TOKEN = "bench-token"
OWNER = "bench"
MIX = "job=40,trials=20,list=10,events=20,submit=10"
"""The default mix: 70 % reads, 20 % event streams, 10 % submissions."""
ENDPOINTS = {"job": "GET /v1/jobs/{id}", "trials": "GET /v1/jobs/{id}/trials", "list": "GET /v1/jobs",
             "events": "GET /v1/jobs/{id}/events (first event)", "submit": "POST /v1/jobs"}
SPEC = {"objective": "quadratic", "objective_params": {"dim": 10}, "method": "random",
        "budget": {"trials": 4, "inner_steps": 20}}
"""A small job: four random-search trials of 20 steps."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered (open loop)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of open-loop load")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("--mix", default=MIX, help=f"weights per request kind (default {MIX})")
    parser.add_argument("--stream-seconds", type=float, default=1.0, help="longest an event stream is read")
    parser.add_argument("--stream-interval", type=float, default=0.5,
                        help="the event streams' polling interval (the server's default 0.5 s)")
    parser.add_argument("--database", action="append", default=None,
                        help="a database URL to run on (repeatable; default a new SQLite file and a scratch "
                             "PostgreSQL database)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL server to create the scratch database on ('' to skip)")
    parser.add_argument("--no-worker", action="store_true", help="no worker: submitted jobs stay queued")
    parser.add_argument("--processes", type=int, default=1, help="the server's API processes (serve --processes)")
    parser.add_argument("--worker-nice", type=int, default=10,
                        help="the worker's niceness (with its Ray): below the API's priority, as on a shared machine")
    parser.add_argument("--clients", type=int, default=50, help="closed-loop clients of the saturation figure")
    parser.add_argument("--saturation-seconds", type=float, default=10.0, help="0: no saturation figure")
    parser.add_argument("--no-ingestion", action="store_true", help="skip the ingestion figure")
    parser.add_argument("--seed", type=int, default=0)


def parse_mix(text: str) -> dict[str, float]:
    """``"job=40,events=20"`` → weights per kind, each a key of :data:`ENDPOINTS`.

    Example:
        >>> parse_mix("job=3,submit=1")
        {'job': 3.0, 'submit': 1.0}
    """
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, weight = item.partition("=")
        if kind not in ENDPOINTS or not weight:
            raise InvalidArgumentError(f"mix item {item!r}: give kind=weight with kind one of {sorted(ENDPOINTS)}")
        weights[kind] = float(weight)
    if not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise InvalidArgumentError(f"mix={text!r}: give non-negative weights, at least one positive")
    return weights


def check_arguments(args: argparse.Namespace) -> None:
    """Every number and the mix in range, before any process starts (else
    :class:`~metatune.errors.InvalidArgumentError`: one line, exit 2)."""
    parse_mix(args.mix)
    for name in ("rate", "duration", "stream_seconds"):
        checks.positive(f"--{name.replace('_', '-')}", getattr(args, name))
    checks.number("--stream-interval", args.stream_interval, low=0.05, high=10.0, note="the server's bounds")
    checks.non_negative("--saturation-seconds", args.saturation_seconds)
    checks.integer("--processes", args.processes, low=1, high=MAX_PROCESSES)  # serve's own bound
    checks.integer("--clients", args.clients, low=1)
    checks.integer("--worker-nice", args.worker_nice, low=0, high=19)


def schedule(rate: float, duration: float, mix: dict[str, float], *, arrivals: str = "poisson",
             seed: int = 0) -> list[tuple[float, str]]:
    """The open loop's plan: (seconds from the start, kind) for every request, in order.
    Poisson arrivals have exponential gaps of mean 1/rate; uniform ones are 1/rate apart."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate={rate} and duration={duration} must both be > 0")
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    plan, moment = [], 0.0
    while True:
        moment = moment + rng.expovariate(rate) if arrivals == "poisson" else (len(plan) + 1) / rate
        if moment >= duration:
            return plan
        plan.append((moment, rng.choices(kinds, weights)[0]))


@dataclass
class LoadResult:
    """What a load run saw: latencies (seconds) and errors per kind, the jobs it submitted."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    submitted: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    """How late the generator sent each request (seconds after its scheduled time): part of
    every latency, and the generator's share of a tail."""
    offered: int = 0
    wall: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(len(v) for v in self.errors.values())

    def percentiles(self) -> dict[str, tuple[int, float, float]]:
        """Per kind: (requests answered, p50 ms, p99 ms)."""
        return {kind: (len(v), float(np.percentile(v, 50)) * 1e3, float(np.percentile(v, 99)) * 1e3)
                for kind, v in sorted(self.latencies.items()) if v}


class RawClient:
    """HTTP/1.1 with keep-alive over asyncio streams, a pool of idle connections, one bearer
    token: a few tens of microseconds of CPU per request, where an httpx client spends about
    a millisecond, which on a 2-core machine would be taken from the server under test."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.idle = host, port, []
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"

    async def request(self, method: str, path: str, body: dict | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; a connection is reused unless the server closes it. An
        idle connection the server closed before answering (its keep-alive ran out: nothing of
        the request was read) is replaced by a new one, as HTTP clients do."""
        if self.idle:
            try:
                return await self._exchange(self.idle.pop(), method, path, body, headers)
            except (asyncio.IncompleteReadError, ConnectionResetError) as error:
                if getattr(error, "partial", b""):
                    raise
                for _, writer in self.idle:  # idle as long or longer: closed by the server too
                    writer.close()
                self.idle.clear()
        connection = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(connection, method, path, body, headers)

    async def _exchange(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, path: str,
                        body: dict | None, headers: dict[str, str] | None) -> tuple[int, bytes]:
        reader, writer = connection
        try:
            self._send(writer, method, path, body, headers)
            status, length, chunked, close = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            data = b"".join([c async for c in _chunks(reader)]) if chunked else await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append(connection)
        return status, data

    async def stream(self, path: str, seconds: float) -> tuple[int, float | None]:
        """Read a chunked response (an event stream) until it ends or ``seconds`` pass:
        (status, the loop's time at its first chunk, or None)."""
        loop = asyncio.get_running_loop()
        first, status = None, 0
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            async with asyncio.timeout(seconds):
                self._send(writer, "GET", path, None, None)
                status, _, chunked, _ = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                if chunked and status == 200:
                    async for _ in _chunks(reader):
                        first = loop.time() if first is None else first
        except TimeoutError:
            pass
        finally:
            writer.close()
        return status, first

    def _send(self, writer: asyncio.StreamWriter, method: str, path: str, body: dict | None,
              headers: dict[str, str] | None) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        payload = b"" if body is None else json.dumps(body).encode()
        kind = "" if body is None else f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}{kind}\r\n".encode() + payload)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """(status, Content-Length, chunked, connection close) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return (int(lines[0].split()[1]), int(fields.get("content-length", 0)),
            fields.get("transfer-encoding") == "chunked", fields.get("connection") == "close")


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The chunks of a chunked body, up to its last (empty) one."""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return
        yield data[:-2]


class Generator:
    """Sends each kind of request of the mix; records latency from the scheduled time."""

    def __init__(self, client: RawClient, jobs: list[str], result: LoadResult, stream_seconds: float,
                 stream_interval: float, seed: int) -> None:
        self.client, self.jobs, self.result = client, jobs, result
        self.stream_seconds, self.stream_interval, self.rng = stream_seconds, stream_interval, random.Random(seed)

    async def send(self, kind: str, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        self.result.lags.append(loop.time() - scheduled)
        try:
            problem = await getattr(self, kind)(scheduled)
        except Exception as error:  # noqa: BLE001 - every failure is counted, with its kind and text
            problem = f"{type(error).__name__}: {error}"
        if problem:
            self.result.errors[kind].append(problem)
        elif kind != "events":
            self.result.latencies[kind].append(loop.time() - scheduled)

    async def job(self, scheduled: float) -> str | None:
        return _expect("GET", await self.client.request("GET", f"/v1/jobs/{self.rng.choice(self.jobs)}"), 200)

    async def trials(self, scheduled: float) -> str | None:
        path = f"/v1/jobs/{self.rng.choice(self.jobs)}/trials"
        return _expect(path, await self.client.request("GET", path), 200)

    async def list(self, scheduled: float) -> str | None:
        return _expect("GET /v1/jobs", await self.client.request("GET", "/v1/jobs?limit=20"), 200)

    async def submit(self, scheduled: float) -> str | None:
        """A new job with its own ``Idempotency-Key``, sent again with it after a transport
        error (the retry is counted as an error, and must not make a second job)."""
        key, body = uuid.uuid4().hex, {**SPEC, "seed": self.rng.randrange(2**31)}
        try:
            answer = await self.client.request("POST", "/v1/jobs", body, {"Idempotency-Key": key})
        except (OSError, asyncio.IncompleteReadError) as error:
            self.result.errors["submit"].append(f"retried after {type(error).__name__}: {error}")
            answer = await self.client.request("POST", "/v1/jobs", body, {"Idempotency-Key": key})
        problem = _expect("POST /v1/jobs", answer, 202)
        if problem is None:
            job_id = json.loads(answer[1])["id"]
            self.result.submitted.append(job_id)
            self.jobs.append(job_id)
        return problem

    async def events(self, scheduled: float) -> str | None:
        """Follow a recent job's events until it ends or ``stream_seconds``; its latency is
        the time to the first event."""
        path = f"/v1/jobs/{self.rng.choice(self.jobs[-20:])}/events?interval={self.stream_interval:g}"
        status, first = await self.client.stream(path, self.stream_seconds)
        if status != 200 or first is None:
            return f"GET {path}: {status}, {'no event' if first is None else 'an event'} in {self.stream_seconds:g} s"
        self.result.latencies["events"].append(first - scheduled)
        return None


def _expect(what: str, answer: tuple[int, bytes], status: int) -> str | None:
    return None if answer[0] == status else f"{what}: {answer[0]} {answer[1][:200]!r}"


async def open_loop(client: RawClient, plan: list[tuple[float, str]], jobs: list[str], *,
                    stream_seconds: float = 1.0, stream_interval: float = 0.5, seed: int = 0) -> LoadResult:
    """Send ``plan`` (from :func:`schedule`) through ``client``, reading from ``jobs`` (ids;
    submitted jobs are added); event streams poll every ``stream_interval`` seconds."""
    result = LoadResult(offered=len(plan))
    generator = Generator(client, list(jobs), result, stream_seconds, stream_interval, seed)
    loop = asyncio.get_running_loop()
    start, tasks = loop.time() + 0.05, []
    for offset, kind in plan:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(generator.send(kind, start + offset)))
    await asyncio.gather(*tasks)
    result.wall = loop.time() - start
    return result


async def closed_loop(client: RawClient, job_ids: list[str], clients: int, seconds: float) -> tuple[float, int]:
    """``clients`` loops reading ``GET /v1/jobs/{id}`` for ``seconds``: (answers per second, errors)."""
    loop = asyncio.get_running_loop()
    stop_at, counts = loop.time() + seconds, [0, 0]

    async def reader(offset: int) -> None:
        i = offset
        while loop.time() < stop_at:
            try:
                status, _ = await client.request("GET", f"/v1/jobs/{job_ids[i % len(job_ids)]}")
            except (OSError, asyncio.IncompleteReadError):
                status = 0
            counts[status != 200] += 1
            i += clients

    began = loop.time()
    await asyncio.gather(*(reader(k) for k in range(clients)))
    return counts[0] / (loop.time() - began), counts[1]


@dataclass
class Integrity:
    """Submitted jobs against the stored ones, and trial numbers per job."""

    lost: list[str]
    unexpected: list[str]
    jobs_with_bad_trials: dict[str, tuple[int, int, int]]
    trials: int

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.jobs_with_bad_trials)


def check_integrity(url: str, *, owner: str, submitted: list[str], known: list[str] = ()) -> Integrity:
    """Compare ``submitted`` (ids answered 202) and ``known`` (jobs made before) with the
    owner's stored jobs; a job's trials must be numbered 0 … n−1, each once
    (``jobs_with_bad_trials``: id → (rows, distinct numbers, largest number))."""
    from sqlalchemy import func, select

    from metatune_service.core.db import Database
    from metatune_service.models import Job, Trial

    db = Database(url)
    try:
        with db.read() as session:
            stored = list(session.scalars(select(Job.id).where(Job.owner == owner)))
            per_job = session.execute(select(Trial.job_id, func.count(), func.count(func.distinct(Trial.number)),
                                             func.max(Trial.number)).join(Job, Job.id == Trial.job_id)
                                      .where(Job.owner == owner).group_by(Trial.job_id)).all()
    finally:
        db.dispose()
    expected = set(submitted) | set(known)
    bad = {job: (rows, distinct, top) for job, rows, distinct, top in per_job
           if not rows == distinct == top + 1}
    duplicates = [i for i in set(submitted) if submitted.count(i) > 1]
    return Integrity(lost=sorted(expected - set(stored)), unexpected=sorted((set(stored) - expected) | set(duplicates)),
                     jobs_with_bad_trials=bad, trials=sum(rows for _, rows, _, _ in per_job))


def start_process(command: list[str], url: str, log: Path, nice: int = 0) -> subprocess.Popen:
    """``metatune <command>`` on ``url`` with the bench's token, its output in ``log``, at
    ``nice`` (its Ray and trial actors, started by it, inherit the priority)."""
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_API_TOKENS": f"{OWNER}:{TOKEN}",
           "METATUNE_MAX_GRADIENT_EVALS": "1e9", "METATUNE_OPTUNA_STORAGE": "off",
           "METATUNE_OUTPUT_DIR": str(log.parent / "out"), "METATUNE_RATE_LIMIT": "0",
           "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "metatune.cli", *command], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=log.parent,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)


def stop_process(process: subprocess.Popen, timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and of its living descendants (the API
    processes of ``serve --processes N``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # ended since it was listed
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that are still running."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except FileNotFoundError:
            continue
    return found


async def wait_ready(client: RawClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if (await client.request("GET", "/healthz"))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the server did not answer /healthz within {seconds:g} s")


async def seed_jobs(client: RawClient, count: int = 20) -> list[str]:
    """Jobs to read from the first request on."""
    ids = []
    for seed in range(count):
        status, body = await client.request("POST", "/v1/jobs", {**SPEC, "seed": seed})
        if status != 202:
            raise RuntimeError(f"POST /v1/jobs: {status} {body[:300]!r}")
        ids.append(json.loads(body)["id"])
    return ids


async def _phases(port: int, args: argparse.Namespace, worker: subprocess.Popen | None,
                  server: subprocess.Popen) -> dict:
    plan = schedule(args.rate, args.duration, parse_mix(args.mix), arrivals=args.arrivals, seed=args.seed)
    client = RawClient("127.0.0.1", port, TOKEN)
    try:
        await wait_ready(client)
        known = await seed_jobs(client)
        await asyncio.sleep(3.0 if worker is not None else 0.0)  # let the worker start on them
        cpu = cpu_seconds(server.pid)
        load = await open_loop(client, plan, known, stream_seconds=args.stream_seconds,
                               stream_interval=args.stream_interval, seed=args.seed)
        server_cpu = (cpu_seconds(server.pid) - cpu) / load.wall
        if worker is not None:
            await asyncio.to_thread(stop_process, worker)
        reads, read_errors = (await closed_loop(client, known + load.submitted, args.clients,
                                                args.saturation_seconds)
                              if args.saturation_seconds > 0 else (float("nan"), 0))
    finally:
        client.close()
    return {"load": load, "known": known, "server_cpu": server_cpu, "reads_per_s": reads, "read_errors": read_errors}


def run_database(label: str, url: str, args: argparse.Namespace) -> dict:
    """Every phase on one database; the figures as one row."""
    from metatune_service.core.migrations import upgrade

    upgrade(url)
    folder = Path(tempfile.mkdtemp(prefix="metatune-bench-service-"))
    port = _free_port()
    server = start_process(["serve", "--no-worker", "--port", str(port), "--processes", str(args.processes)], url,
                           folder / "serve.log")
    worker = None if args.no_worker else start_process(["worker"], url, folder / "worker.log", args.worker_nice)
    try:
        figures = asyncio.run(_phases(port, args, worker, server))
    finally:
        stop_process(server)
        if worker is not None:
            stop_process(worker)
    load = figures["load"]
    integrity = check_integrity(url, owner=OWNER, submitted=load.submitted, known=figures["known"])
    row = {"database": label, "offered": load.offered, "rate": load.offered / args.duration,
           "wall_s": load.wall, "errors": load.error_count + figures["read_errors"],
           "error_samples": {k: v[:3] for k, v in load.errors.items()}, "submitted": len(load.submitted),
           "lost": integrity.lost, "unexpected": integrity.unexpected, "trials": integrity.trials,
           "bad_trials": integrity.jobs_with_bad_trials, "server_cpu": figures["server_cpu"],
           "latency": load.percentiles(),
           "lag_ms": (float(np.percentile(load.lags, 50)) * 1e3, float(np.percentile(load.lags, 99)) * 1e3), "reads_per_s": figures["reads_per_s"], "logs": str(folder)}
    if not args.no_ingestion:
        row["ingestion_rows_per_s"] = ingestion(url)
    return row


def ingestion(url: str, trials: int = 2000, batch: int = 32) -> float:
    """Rows (trials + their metrics) per second through :func:`metatune_service.crud.write_trials`."""
    from metatune.job import TuningJob
    from metatune.point import MetaGradient, Point
    from metatune.tuners import ChainStep, Trial
    from metatune_service import crud
    from metatune_service.core.db import Database

    db = Database(url)
    [created] = crud.create_jobs(db, owner="bench-ingestion", specs=[TuningJob("quadratic", "metagrad", budget=1.0)]).jobs
    job = crud.claim_job(db, worker="bench", lease_seconds=600, max_attempts=5)
    while job is not None and job.id != created.id:  # queued jobs the worker left: claimed, then ours
        job = crud.claim_job(db, worker="bench", lease_seconds=600, max_attempts=5)
    if job is None:
        raise RuntimeError("ingestion: the bench's job could not be claimed")
    gradient = MetaGradient((1.0,), (2.0,), growth_rate=0.1, amplification=3.0)
    metrics = {"final_train_loss": 0.5, **gradient.to_metrics()}
    rows = [Trial(n, Point.scalar(0.1, 0.9), 1.0 / (n + 1), False, 31.0, 31.0 * (n + 1), 0.01, 0.9, True, metrics,
                  chain=ChainStep(0, True, gradient)) for n in range(trials)]
    began = time.perf_counter()
    for first in range(0, trials, batch):
        if not crud.write_trials(db, job_id=job.id, worker="bench", trials=rows[first:first + batch], lambda_max=100.0):
            raise RuntimeError("the bench lost its job's lease: nothing was written")
    wall = time.perf_counter() - began
    if len(crud.list_trials(db, job_id=job.id, limit=trials + 1)) != trials:
        raise RuntimeError("ingestion: the trials written are not the trials read back")
    db.dispose()
    return trials * (1 + len(metrics)) / wall


def print_row(row: dict) -> None:
    print(f"\n## {row['database']}: {row['offered']} requests offered in {row['wall_s']:.1f} s "
          f"({row['rate']:.0f}/s), server CPU {row['server_cpu']:.0%} of a core")
    print(f"errors {row['errors']} {row['error_samples'] or ''}; submitted {row['submitted']}, lost "
          f"{len(row['lost'])}, unexpected or duplicated {len(row['unexpected'])}; {row['trials']} trials, "
          f"jobs whose trial numbers are not 0..n-1 once each: {len(row['bad_trials'])}")
    print("| endpoint | answered | p50 ms | p99 ms |\n|---|---|---|---|")
    for kind, (count, p50, p99) in row["latency"].items():
        print(f"| {ENDPOINTS[kind]} | {count} | {p50:.1f} | {p99:.1f} |")
    print(f"| (the generator's lateness in sending, part of each latency) | {row['offered']} | "
          f"{row['lag_ms'][0]:.1f} | {row['lag_ms'][1]:.1f} |")
    reads = row["reads_per_s"]
    print(("saturation: not measured (--saturation-seconds 0)" if math.isnan(reads) else
           f"saturation: {reads:.0f} GET /v1/jobs/{{id}} per second (closed loop)")
          + (f"; ingestion {row['ingestion_rows_per_s']:.0f} rows/s" if "ingestion_rows_per_s" in row else ""))


def main(args: argparse.Namespace) -> int:
    check_arguments(args)
    print(f"{machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; open loop "
          f"({args.arrivals}) at {args.rate:g}/s for {args.duration:g} s, mix {args.mix}, "
          f"{'no worker' if args.no_worker else f'one worker running the jobs (nice {args.worker_nice})'}, "
          f"{args.processes} API process{'es' if args.processes > 1 else ''}")
    databases = [(url.split(":", 1)[0], url) for url in args.database or []]
    scratch = None
    if args.database is None:
        databases.append(("SQLite (WAL)", f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"))
        scratch = _scratch_postgres(args.postgres) if args.postgres else None
        if scratch:
            databases.append(("PostgreSQL", args.postgres.rsplit("/", 1)[0] + f"/{scratch}"))
    rows = []
    try:
        for label, url in databases:
            rows.append(run_database(label, url, args))
            print_row(rows[-1])
    finally:
        if scratch:
            _drop_postgres(args.postgres, scratch)
    write_json(rows, args.json)
    return 0 if all(r["errors"] == 0 and not (r["lost"] or r["unexpected"] or r["bad_trials"]) for r in rows) else 1


def _scratch_postgres(url: str) -> str | None:
    try:
        import psycopg

        name = f"metatune_bench_{os.getpid()}"
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        return name
    except Exception as error:  # noqa: BLE001 - reported, and the SQLite figures still printed
        print(f"(PostgreSQL skipped: {error})")
        return None


def _drop_postgres(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=2) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
