"""Resource hygiene of ``metatune serve``: run many small jobs through a real server and print
its resident memory (RSS), open file descriptors and database connections once a warm-up is
done and again after the measured jobs.

A server that holds steady keeps RSS within 10 % of its value after the warm-up (the warm-up
pays for imports, Ray's start and the connection pool), and ends with as many file
descriptors and database connections as it had then. Each job is the smallest the service
runs: ``random`` on a 2-dimensional ``quadratic``, one trial of a few steps, on the server's
embedded worker and its local Ray.

    python examples/service_hygiene.py                       # 500 jobs after 50, SQLite
    python examples/service_hygiene.py --jobs 60 --warmup 20
    python examples/service_hygiene.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB

Connections are counted from the server's side: on SQLite, the descriptors the server process
holds on a database file (one per pooled connection, its own and Optuna's); on PostgreSQL,
the server's sessions in ``pg_stat_activity`` for that database.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SMALLEST_JOB = {"objective": "quadratic", "objective_params": {"dim": 2, "kappa": 10.0}, "method": "random",
                "budget": {"inner_steps": 5, "trials": 1}}
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, database_url: str, tokens: str, worker: bool = True) -> tuple[subprocess.Popen, str]:
    """``metatune serve`` on a free loopback port (with its embedded worker unless ``worker`` is
    False; no rate limit: the load here is the point) with ``tokens`` as METATUNE_API_TOKENS;
    returns the process and its URL once ``/healthz`` answers. Its output goes to
    ``workdir/serve.log``."""
    port = free_port()
    env = {**os.environ, "METATUNE_DATABASE_URL": database_url, "METATUNE_API_TOKENS": tokens,
           "METATUNE_OUTPUT_DIR": str(workdir / "out"), "METATUNE_RAY_DIR": str(workdir / "ray"),
           "METATUNE_POLL_SECONDS": "0.05", "METATUNE_RATE_LIMIT": "0", "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "metatune.cli", "serve", "--port", str(port)] + ([] if worker else ["--no-worker"])
    with (workdir / "serve.log").open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"metatune serve exited with {server.returncode}: "
                               f"{(workdir / 'serve.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("metatune serve did not answer /healthz within 120 s")


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def descriptors(pid: int) -> list[str]:
    """What each open file descriptor of the process points at."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed between listing and reading
            pass
    return targets


def connections(pid: int, database_url: str) -> int:
    """The server's open database connections (see the module's docstring)."""
    if database_url.startswith("sqlite"):
        return sum(1 for target in descriptors(pid) if target.endswith(".db"))
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": make_url(database_url).database}).scalar())
    finally:
        engine.dispose()


def children(pid: int) -> int:
    """How many processes descend from ``pid`` (Ray's workers and helpers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return len(found)


def snapshot(pid: int, database_url: str) -> dict[str, int]:
    return {"rss_kib": rss_kib(pid), "fds": len(descriptors(pid)), "connections": connections(pid, database_url),
            "processes": children(pid)}


def total(client: httpx.Client, status: str) -> int:
    """How many of the caller's jobs are in ``status``."""
    response = client.get("/v1/jobs", params={"status": status, "limit": 1})
    response.raise_for_status()
    return response.json()["total"]


def run_jobs(client: httpx.Client, count: int) -> dict[str, int]:
    """Submit ``count`` smallest jobs (seeds 0…count−1), wait until each has ended; returns how
    many ended in each status."""
    for seed in range(count):
        client.post("/v1/jobs", json={**SMALLEST_JOB, "seed": seed}).raise_for_status()
    before = {status: total(client, status) for status in FINAL}
    deadline = time.monotonic() + 120 + 60 * count  # generous: a job takes 3-15 s on 2 busy cores
    while True:
        ended = {status: total(client, status) - before[status] for status in FINAL}
        if sum(ended.values()) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count - sum(ended.values())} of {count} jobs had not ended in time")
        time.sleep(0.25)
    return ended


STEADY = ("fds", "connections", "processes")
"""What returns to where it was once a server is idle again (RSS may grow, within bounds)."""


def settled(pid: int, database_url: str, seconds: float = 2.0, *, back_to: dict[str, int] | None = None,
            within: float = 15.0) -> dict[str, int]:
    """A snapshot once the server has been idle for ``seconds`` (its worker polls an empty
    queue); with ``back_to``, the first one whose fds, connections and processes are at or
    below it, or the last after ``within`` seconds more (a Ray helper or a closing connection
    may still be ending when the last job ends)."""
    time.sleep(seconds)
    deadline = time.monotonic() + within
    while True:
        now = snapshot(pid, database_url)
        if back_to is None or all(now[k] <= back_to[k] for k in STEADY) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended within a minute."""
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def measure(jobs: int = 500, warmup: int = 50, database_url: str | None = None,
            workdir: Path | None = None) -> dict:
    """Start a server, run ``warmup`` jobs, snapshot it, run ``jobs`` more, snapshot it again.

    Returns ``{"start", "end"}`` snapshots (``rss_kib``, ``fds``, ``connections``,
    ``processes``), ``rss_growth`` ((end − start) / start), the statuses the jobs ended in, the
    measured jobs' wall time, and ``log``: the server's output.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="metatune-hygiene-"))
    database_url = database_url or f"sqlite:///{workdir / 'metatune.db'}"
    token = secrets.token_urlsafe(24)
    server, url = start_server(workdir, database_url, f"hygiene:{token}")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            warm = run_jobs(client, warmup)
            start = settled(server.pid, database_url)
            began = time.monotonic()
            ended = run_jobs(client, jobs)
            seconds = time.monotonic() - began
            end = settled(server.pid, database_url, back_to=start)
    finally:
        stop(server)
    return {"jobs": jobs, "warmup": warmup, "warmup_statuses": warm, "statuses": ended, "seconds": seconds,
            "start": start, "end": end, "rss_growth": (end["rss_kib"] - start["rss_kib"]) / start["rss_kib"],
            "log": (workdir / "serve.log").read_text(errors="replace")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs measured (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="jobs run before the first snapshot (default 50)")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a new temporary folder")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    result = measure(args.jobs, args.warmup, args.database_url)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "log"}))
        return 0
    start, end = result["start"], result["end"]
    print(f"{args.jobs} jobs after a warm-up of {args.warmup}: {result['statuses']} in {result['seconds']:.1f} s "
          f"({result['seconds'] / max(args.jobs, 1):.3f} s a job)")
    print(f"RSS         {start['rss_kib'] / 1024:8.1f} MiB -> {end['rss_kib'] / 1024:8.1f} MiB "
          f"({100 * result['rss_growth']:+.1f} %)")
    for key in ("fds", "connections", "processes"):
        print(f"{key:<11} {start[key]:8d}     -> {end[key]:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
