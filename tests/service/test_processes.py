"""What ``metatune serve`` and ``metatune worker`` leave behind, run as the real commands: the
embedded Ray listens on 127.0.0.1 only; after ``kill -9`` none of the process's Ray processes
outlives it and its session folder goes; a later start sweeps what a killed process and its
watchdog left; SIGTERM hands the running job back (lease released), exits 0 and leaves no
process, no Ray session folder and no Ray Tune result folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("ray")
import ray  # noqa: E402,F401 - puts Ray's own psutil on the path
import psutil  # noqa: E402

from metatune.distributed.cluster import session_processes, sweep  # noqa: E402
from metatune_service import crud  # noqa: E402
from metatune_service.core.config import Settings  # noqa: E402
from metatune_service.core.db import Database  # noqa: E402
from metatune_service.core.migrations import upgrade  # noqa: E402
from metatune_service.schemas import JobCreate  # noqa: E402
from metatune_service.validation import normalise  # noqa: E402

from .conftest import TOKENS, free_port  # noqa: E402

AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture
def ray_root():
    """A short Ray folder of the test's own (so that Ray's session folders go right under
    ``root/tmp``); whatever a failed test leaves there is killed and removed."""
    root = Path(tempfile.mkdtemp(prefix="mt-"))
    yield root
    for session in (root / "tmp").glob("session_*"):
        for pid in session_processes(session):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    shutil.rmtree(root, ignore_errors=True)


def session_folder(temp: Path, pid: int) -> Path:
    """A folder named as Ray names a session that process ``pid`` makes now."""
    folder = temp / f"session_{time.strftime('%Y-%m-%d_%H-%M-%S')}_000001_{pid}"
    (folder / "logs").mkdir(parents=True)
    return folder


def test_a_start_sweeps_the_sessions_of_dead_owners_and_their_processes_only(tmp_path):
    """A session whose owner has ended is removed, with a process that still has a log open
    there (as Ray's agents do, renamed so that their command line no longer names it); the
    session of a running owner and the process holding its logs are left alone."""
    temp = tmp_path / "tmp"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale, live = session_folder(temp, ended.pid), session_folder(temp, os.getpid())
    hold = "import os, time; log = open(os.environ['LOG'], 'w'); time.sleep(60)"
    holders = [subprocess.Popen([sys.executable, "-c", hold], env={**os.environ, "LOG": f"{folder}/logs/a"})
               for folder in (stale, live)]  # the folder is not on their command lines
    try:
        wait_until(lambda: all((folder / "logs" / "a").exists() for folder in (stale, live)), 30,
                   "both logs opened")
        time.sleep(0.5)  # the log is open by now
        assert sweep(temp) == [stale]
        assert not stale.exists() and holders[0].wait(timeout=10) == -signal.SIGKILL
        assert live.is_dir() and holders[1].poll() is None
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def start(argv: list[str], tmp_path: Path, root: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_RAY_DIR": str(root), "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "disabled", "METATUNE_OUTPUT_DIR": str(tmp_path / "out"),
           "METATUNE_API_TOKENS": TOKENS, "METATUNE_LEASE_SECONDS": "10", "METATUNE_HEARTBEAT_SECONDS": "0.5",
           "METATUNE_POLL_SECONDS": "0.2"}
    env.pop("RAY_ADDRESS", None)
    env.pop("METATUNE_RAY_HOST", None)
    path = tmp_path / f"{argv[0]}-{time.monotonic_ns()}.log"
    with open(path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "metatune.cli", *argv], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log = path  # type: ignore[attr-defined]
    return process


def ready(process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait for the command's start-up line, printed once its own signal handlers replace Ray's
    (a SIGTERM before then meets ``ray.init``'s handler)."""
    wait_until(lambda: f"metatune {process.args[3]}" in process.log.read_text()  # type: ignore[attr-defined]
               or process.poll() is not None, timeout, "the command's start-up line")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return value


def descendants(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def ray_up(process: subprocess.Popen, timeout: float = 120) -> list[psutil.Process]:
    """The command's processes once its Ray is up (raylet and both agents started)."""
    def up() -> list[psutil.Process] | None:
        assert process.poll() is None, f"the command ended with exit code {process.returncode}"
        found = descendants(process)
        names = {command_line(p).split(" ")[0] for p in found}
        return found if {*AGENTS} <= names and any("raylet" in n for n in names) else None

    return wait_until(up, timeout, "Ray's raylet and agents started")


def alive(processes: list[psutil.Process]) -> list[str]:
    """Those of ``processes`` still running (zombies have ended), as ``pid name``."""
    left = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {command_line(p)[:60]}")
        except psutil.NoSuchProcess:
            pass
    return left


def listening(processes: list[psutil.Process]) -> set[tuple[str, str]]:
    found = set()
    for p in processes:
        try:
            found |= {(command_line(p)[:40], c.laddr.ip) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return found


def sessions(root: Path) -> list[Path]:
    return [p for p in (root / "tmp").glob("session_*") if not p.is_symlink()]


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_a_killed_worker_leaves_no_ray_process_and_a_new_start_sweeps_what_remains(tmp_path, ray_root):
    """``kill -9`` of ``metatune worker`` (the process alone, as an operator or the OOM killer
    does): within seconds none of its processes runs (Ray's agents used to outlive it by a
    minute) and its session folder is gone. With its watchdog killed too, the folder and
    agents stay, and the next start sweeps them before its own Ray starts; that one ends on
    SIGTERM with exit code 0 and leaves nothing. Every Ray process listens on loopback only."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    first = start(["worker"], tmp_path, ray_root, url)
    try:
        processes = ray_up(first)
        (session,) = sessions(ray_root)
        assert session.name.endswith(f"_{first.pid}")
        addresses = listening([psutil.Process(first.pid), *processes])
        assert addresses and {ip for _, ip in addresses} <= LOOPBACK, addresses
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed = time.monotonic()
        wait_until(lambda: not alive(processes), 15, "no process of the killed worker left")
        wait_until(lambda: not session.exists(), 15, "the killed worker's session folder removed")
        assert time.monotonic() - killed < 15
    finally:
        stop(first)

    second = start(["worker"], tmp_path, ray_root, url)
    try:
        processes = ray_up(second)
        (session,) = sessions(ray_root)
        (watchdog,) = [p for p in processes if "sys.stdin.buffer.read()" in command_line(p)]
        watchdog.kill()
        wait_until(lambda: not alive([watchdog]), 10, "the watchdog killed")
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
        time.sleep(1.0)
        assert session.exists()  # nobody left to clean it up
    finally:
        stop(second)

    third = start(["worker"], tmp_path, ray_root, url)
    try:
        mine = ray_up(third)
        ready(third)
        assert not session.exists() and not alive(processes), alive(processes)  # swept before its Ray started
        assert [s.name.rsplit("_", 1)[1] for s in sessions(ray_root)] == [str(third.pid)]
        assert stop(third) == 0
        wait_until(lambda: not alive(mine), 15, "no process of the stopped worker left")
        assert sessions(ray_root) == []
    finally:
        stop(third)


def slow_job(url: str) -> str:
    """A TPE job of 500 trials of 100 steps: still running minutes after it starts."""
    upgrade(url)
    db = Database(url)
    try:
        budget = {"inner_steps": 100, "trials": 500}
        spec = normalise(JobCreate(objective="mlp-digits", method="tpe", budget=budget),
                         Settings(database_url=url, max_gradient_evals=1e7))
        [job] = crud.create_jobs(db, owner="alice", specs=[spec]).jobs
        return job.id
    finally:
        db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["worker"], ["serve", "--port", "{port}"],
                                  ["serve", "--port", "{port}", "--processes", "2"]],
                         ids=["worker", "serve", "serve-2-processes"])
def test_sigterm_hands_the_running_job_back_and_leaves_nothing(argv, tmp_path, ray_root):
    """SIGTERM while a job runs: exit code 0 within seconds; the job is queued again with no
    lease (another worker claims it at once, without waiting for the lease to run out); none
    of the processes the command had started runs; its Ray session folder and Ray Tune's
    result folders are gone."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    job_id = slow_job(url)
    command = start([a.format(port=free_port()) for a in argv], tmp_path, ray_root, url)
    db = Database(url)
    try:
        wait_until(lambda: len(crud.list_trials(db, job_id=job_id)) >= 2 or command.poll() is not None, 240,
                   "two trials recorded")
        processes = descendants(command)
        job = crud.get_job(db, job_id=job_id)
        assert command.poll() is None and job.status == "running" and job.lease_holder is not None
        results = tmp_path / "out" / "ray"
        assert [p.name for p in results.iterdir()] and len(sessions(ray_root)) == 1
        asked = time.monotonic()
        assert stop(command) == 0
        assert time.monotonic() - asked < 60
        job = crud.get_job(db, job_id=job_id)
        assert (job.status, job.lease_holder, job.lease_expires) == ("queued", None, None)
        assert len(crud.list_trials(db, job_id=job_id)) < 500
        wait_until(lambda: not alive(processes), 15, "no process of the stopped command left")
        assert sessions(ray_root) == [] and not results.exists()
        claimed = crud.claim_job(db, worker="another", lease_seconds=10, max_attempts=3)
        assert claimed is not None and claimed.id == job_id
    finally:
        stop(command)
        db.dispose()


def api_processes(command: subprocess.Popen) -> list[psutil.Process]:
    """The API processes of ``serve --processes N`` (uvicorn's spawned children)."""
    return [p for p in descendants(command) if "spawn_main" in command_line(p)]


def test_serve_processes_share_the_port_and_one_killed_is_started_again(tmp_path, ray_root):
    """``serve --processes 2``: two API processes answer on one port (every answer complete
    and the same job's), ``kill -9`` of one is answered by the other and the supervisor
    starts a new one, and SIGTERM exits 0 with none of them left."""
    import httpx

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    port = free_port()
    command = start(["serve", "--no-worker", "--port", str(port), "--processes", "2"], tmp_path, ray_root, url)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKENS.split(',')[0].split(':')[1]}"}

    def answering() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(lambda: len(api_processes(command)) == 2 and answering(), 120, "two API processes answering")
        first = api_processes(command)
        job = httpx.post(f"{base}/v1/jobs", json={"objective": "quadratic", "method": "random"}, headers=headers,
                         timeout=10).json()
        reads = [httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers, timeout=10) for _ in range(20)]
        assert {r.status_code for r in reads} == {200} and {r.json()["id"] for r in reads} == {job["id"]}
        first[0].kill()
        assert httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers, timeout=10).json()["status"] == "queued"
        wait_until(lambda: len(api_processes(command)) == 2 and first[0].pid not in
                   {p.pid for p in api_processes(command)}, 60, "the killed API process started again")
        processes = descendants(command)
        assert stop(command) == 0
        wait_until(lambda: not alive(processes), 15, "no API process left")
    finally:
        stop(command)
