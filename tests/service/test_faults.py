"""Faults of workers: a standalone `metatune worker` killed with SIGKILL mid-job, `metatune serve`
(the API and its embedded worker) killed with SIGKILL mid-job and started again, a worker whose
lease runs out (by its clock) while another takes the job over, two workers racing for one job,
and a Ray trial's process killed. Each ends with the job succeeded, every trial number once, no
point evaluated twice, and no job left `running`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.core.migrations import upgrade
from metatune_service.models import Job, utcnow
from metatune_service.schemas import JobCreate
from metatune_service.status import JobStatus
from metatune_service.validation import normalise
from metatune_service.worker import Worker

from .conftest import TOKENS, FakeClock, free_port, wait_for

pytestmark = pytest.mark.slow

QUICK = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}, "method": "tpe",
         "budget": {"inner_steps": 30, "trials": 4}}


def submit(db: Database, settings: Settings, **spec) -> str:
    [job] = crud.create_jobs(db, owner="alice", specs=[normalise(JobCreate(**spec), settings)]).jobs
    return job.id


def assert_whole(db: Database, job_id: str, trials: int, before: dict | None = None) -> None:
    """The job succeeded with trials 0..trials-1 each once, no (η, β) twice, its spend the
    budget's, and the trials recorded before a fault kept as they were."""
    job = crud.get_job(db, job_id=job_id)
    assert job.status == "succeeded", job.error
    rows = crud.list_trials(db, job_id=job_id)
    assert [t.number for t in rows] == list(range(trials))
    assert len({(t.lr, t.momentum) for t in rows}) == trials
    assert all(t.status != "failed" for t in rows)
    if before is not None:
        assert {t.number: (t.lr, t.momentum, t.value) for t in rows if t.number in before} == before


def recorded(db: Database, job_id: str) -> dict[int, tuple]:
    return {t.number: (t.lr, t.momentum, t.value) for t in crud.list_trials(db, job_id=job_id)}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- processes (read from /proc: no dependency for it) -----------------------------------------------

def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def started_under(ray_dir: Path) -> list[int]:
    """The live processes whose environment names ``ray_dir`` as METATUNE_RAY_DIR: a worker
    started by this test, its Ray and whatever they left behind."""
    return [pid for pid in _pids() if _environ(pid).get("METATUNE_RAY_DIR") == str(ray_dir) and _alive(pid)]


def end_processes(ray_dir: Path) -> None:
    """SIGKILL what a test's workers left running (Ray's agents outlive a killed worker)."""
    for pid in started_under(ray_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_worker(url: str, out: Path, ray_dir: Path, lease: float = 2.0) -> subprocess.Popen:
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_LEASE_SECONDS": str(lease),
           "METATUNE_HEARTBEAT_SECONDS": "0.5", "METATUNE_POLL_SECONDS": "0.2", "OMP_NUM_THREADS": "1",
           "METATUNE_OUTPUT_DIR": str(out), "METATUNE_RAY_DIR": str(ray_dir), "METATUNE_OPTUNA_STORAGE": "off"}
    return subprocess.Popen([sys.executable, "-m", "metatune.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def run_serve(url: str, out: Path, ray_dir: Path, port: int, lease: float = 2.0) -> subprocess.Popen:
    """`metatune serve` (the API with its embedded worker) on ``port``, in a session of its own."""
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_LEASE_SECONDS": str(lease),
           "METATUNE_HEARTBEAT_SECONDS": "0.5", "METATUNE_POLL_SECONDS": "0.2", "OMP_NUM_THREADS": "1",
           "METATUNE_OUTPUT_DIR": str(out), "METATUNE_RAY_DIR": str(ray_dir), "METATUNE_API_TOKENS": TOKENS,
           "METATUNE_OPTUNA_STORAGE": "off"}
    env.pop("RAY_ADDRESS", None)
    env.pop("METATUNE_RAY_HOST", None)
    return subprocess.Popen([sys.executable, "-m", "metatune.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def running_with_trials(client: httpx.Client, job_id: str) -> bool:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job["status"] == "running" and job["trials"] >= 1


def descendants(pid: int) -> list[int]:
    """The live children, grandchildren, … of process ``pid``."""
    parents = {child: _parent(child) for child in _pids()}
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += frontier
    return [child for child in found if _alive(child)]


# -- the tests ---------------------------------------------------------------------------------------

def test_a_standalone_worker_killed_mid_job_with_trials_in_flight_is_resumed_by_another(database_url, tmp_path):
    """`metatune worker` (its Ray in its process group) is killed with SIGKILL while two trials
    run; a second worker claims the job once its lease has run out and finishes it: every
    recorded trial kept, none run again (TPE's sampler does not draw its sequence again)."""
    upgrade(database_url)
    db, ray_dir = Database(database_url), tmp_path / "r"
    settings = Settings(database_url=database_url, max_gradient_evals=1e7)
    job_id = submit(db, settings, objective="mlp-digits", method="tpe", concurrency=2,
                    budget={"inner_steps": 100, "trials": 14})
    try:
        first = run_worker(database_url, tmp_path / "out", ray_dir)
        wait_until(lambda: len(crud.list_trials(db, job_id=job_id)) >= 5, 60, "the first worker records 5 trials")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        before = recorded(db, job_id)
        assert 5 <= len(before) < 14 and crud.get_job(db, job_id=job_id).status == "running"
        second = run_worker(database_url, tmp_path / "out", ray_dir)
        wait_until(lambda: crud.get_job(db, job_id=job_id).status != "running", 90, "the second worker ends the job")
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        assert_whole(db, job_id, 14, before)
        assert crud.get_job(db, job_id=job_id).attempts == 2
    finally:
        end_processes(ray_dir)
        db.dispose()


def test_serve_killed_mid_job_answers_again_once_restarted_and_resumes_the_job(database_url, tmp_path):
    """`metatune serve` is killed with SIGKILL (the process alone, as the OOM killer does) while
    a job it runs has recorded a trial; within 15 s none of its processes runs (its Ray's
    included). Started again on the same database and port, it answers /healthz and the job
    within 30 s, claims the job (the dead server's 2 s lease has run out by then) and
    finishes it: trials 0..n-1 each once, those recorded before the kill unchanged, no job
    `running` past its lease."""
    db, port, trials = Database(database_url), free_port(), 8
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={"Authorization": "Bearer token-alice"})
    first = run_serve(database_url, tmp_path / "out", tmp_path / "r1", port)
    second = None
    try:
        wait_until(lambda: answers(client, "/healthz") or first.poll() is not None, 60,
                   "the first server answers")
        created = client.post("/v1/jobs", json={"objective": "mlp-digits", "method": "tpe",
                                                "budget": {"inner_steps": 100, "trials": trials}})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        wait_until(lambda: running_with_trials(client, job_id), 60, "the job runs and has recorded a trial")
        processes = descendants(first.pid)
        assert processes  # its Ray's
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed = time.monotonic()
        before = recorded(db, job_id)
        job = crud.get_job(db, job_id=job_id)
        assert 1 <= len(before) < trials and job.status == "running" and job.lease_holder is not None

        second = run_serve(database_url, tmp_path / "out", tmp_path / "r2", port)
        restarted = time.monotonic()
        wait_until(lambda: answers(client, "/healthz") or second.poll() is not None, 30,
                   "/healthz answers again")
        assert answers(client, f"/v1/jobs/{job_id}")
        assert time.monotonic() - restarted < 30
        wait_until(lambda: not [pid for pid in processes if _alive(pid)], 15,
                   "the killed server's processes end")
        assert not started_under(tmp_path / "r1") and time.monotonic() - killed < 15
        done = wait_for(client, job_id, timeout=60)
        assert done["status"] == "succeeded", done["error"]
        assert_whole(db, job_id, trials, before)
        assert crud.get_job(db, job_id=job_id).attempts == 2
        with db.read() as session:
            stuck = session.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING,
                                                         Job.lease_expires < utcnow())).all()
        assert stuck == []
    finally:
        client.close()
        for server in (first, second):
            if server is not None and server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
        for ray_dir in (tmp_path / "r1", tmp_path / "r2"):
            end_processes(ray_dir)
        db.dispose()


def test_a_worker_whose_lease_ran_out_stops_and_the_next_one_resumes_the_job(migrated, database_url, tmp_path,
                                                                            ray_cluster):
    """Worker A's clock stands still (it never renews its lease: a worker that hangs); by worker
    B's clock the lease has run out, so B claims the job. A's next write is refused, A stops
    without touching the job, and B resumes it from A's trials."""
    settings = Settings(database_url=database_url, output_dir=tmp_path / "out", lease_seconds=5,
                        heartbeat_seconds=0.5, poll_seconds=0.1, max_gradient_evals=1e7, optuna_storage="off")
    job_id = submit(migrated, settings, objective="mlp-digits", method="tpe", concurrency=2,
                    budget={"inner_steps": 100, "trials": 30})  # A must not finish it before B's claim
    a_clock, b_clock = FakeClock(), FakeClock()
    a = Worker(migrated, settings, name="a", clock=a_clock)
    job = crud.claim_job(migrated, worker="a", lease_seconds=5, max_attempts=3, clock=a_clock)
    running = threading.Thread(target=a.execute, args=(job,), daemon=True)
    running.start()
    wait_until(lambda: len(crud.list_trials(migrated, job_id=job_id)) >= 3, 60, "worker A records 3 trials")
    b_clock.advance(6)
    assert crud.claim_job(migrated, worker="b", lease_seconds=5, max_attempts=3, clock=a_clock) is None
    claims = []  # polled as a worker polls: a claim skips the row while A's heartbeat or write holds its lock
    wait_until(lambda: claims.append(crud.claim_job(migrated, worker="b", lease_seconds=60, max_attempts=3,
                                                    clock=b_clock)) or claims[-1] is not None, 10,
               f"B claims the job ({len(crud.list_trials(migrated, job_id=job_id))} trials recorded)")
    taken = claims[-1]
    assert taken is not None and taken.id == job_id and taken.attempts == 2
    running.join(timeout=120)
    assert not running.is_alive()
    before = recorded(migrated, job_id)
    assert crud.get_job(migrated, job_id=job_id).lease_holder == "b"  # A changed nothing once it lost the lease
    Worker(migrated, settings, name="b", clock=b_clock).execute(taken)
    assert_whole(migrated, job_id, 30, before)


def test_two_workers_racing_for_one_job_claim_it_once_and_a_trial_number_is_stored_once(migrated, database_url):
    """Eight claims at once, from eight threads, for one queued job: exactly one gets it. The
    database refuses a second row with a trial's number, and a worker without the lease
    writes nothing."""
    settings = Settings(database_url=database_url, max_gradient_evals=1e7)
    job_id = submit(migrated, settings, **QUICK)
    barrier, claimed = threading.Barrier(8), []

    def claim(name: str) -> None:
        barrier.wait()
        claimed.append((name, crud.claim_job(migrated, worker=name, lease_seconds=30, max_attempts=3)))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [(name, job) for name, job in claimed if job is not None]
    assert len(claimed) == 8 and len(winners) == 1 and winners[0][1].id == job_id
    holder = winners[0][0]
    assert crud.get_job(migrated, job_id=job_id).lease_holder == holder

    import metatune as mt

    trial = mt.tune(mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=30), "tpe", 31, seed=0).trials[0]
    assert crud.write_trials(migrated, job_id=job_id, worker=holder, trials=[trial], lambda_max=None)
    loser = next(name for name, _ in claimed if name != holder)
    assert not crud.write_trials(migrated, job_id=job_id, worker=loser, trials=[trial], lambda_max=None)
    with pytest.raises(IntegrityError):
        crud.write_trials(migrated, job_id=job_id, worker=holder, trials=[trial], lambda_max=None)
    assert [t.number for t in crud.list_trials(migrated, job_id=job_id)] == [0]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from_this_process(pid: int) -> bool:
    """Whether ``pid`` is a child, grandchild, … of this test process (the session's Ray)."""
    me = os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if pid == me:
            return True
    return False


def running_trials() -> list[int]:
    """Processes of this session's Ray running a trial (Ray names them ``ray::ImplicitFunc.train``)."""
    return [pid for pid in _pids()
            if _cmdline(pid).startswith("ray::ImplicitFunc.train") and descends_from_this_process(pid)]


def test_a_killed_ray_trial_process_is_retried_and_the_job_loses_no_trial(served, worker):
    """SIGKILL of the Ray worker process running a trial: Ray Tune retries the trial
    (FailureConfig(max_failures=2)) in a new process, and the job records every trial once."""
    client = served.client()
    job = client.post("/v1/jobs", json={"objective": "mlp-digits", "method": "tpe",
                                         "budget": {"inner_steps": 300, "trials": 6}}).json()
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 60, "the job starts")
    victims: list[int] = []
    deadline = time.monotonic() + 60
    while not victims and time.monotonic() < deadline:
        victims = running_trials()
        time.sleep(0.02)
    assert victims, "no trial process seen running"
    os.kill(victims[0], signal.SIGKILL)
    done = wait_for(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert_whole(served.db, job["id"], 6)
    assert not _alive(victims[0])
