"""Jobs run by workers on a real Ray: results as in-process, events, cancel, a killed worker's
job resumed by another without losing or repeating a trial, and `metatune serve` end to end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

import metatune as mt
from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.core.migrations import upgrade
from metatune_service.models import MetagradStep

from .conftest import TOKENS, free_port, wait_for

QUAD = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}, "method": "tpe",
        "budget": {"inner_steps": 30, "trials": 8}}


@pytest.mark.parametrize("method", ["tpe", "metagrad"])
def test_a_job_runs_on_ray_and_its_trials_are_those_of_in_process_tuning(served, worker, method):
    client = served.client()
    job = client.post("/v1/jobs", json={**QUAD, "method": method, "budget": {"inner_steps": 30,
                                                                              "gradient_evals": 31 * 12}}).json()
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"interval": 0.1}).text  # streams until the end
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    objective = mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=30)
    local = mt.tune(objective, method, 31 * 12, seed=0)
    assert [(t["lr"], t["momentum"]) for t in trials] == [(t.lr, t.momentum) for t in local.trials]
    served_values = [math.inf if t["value"] is None else t["value"] for t in trials]  # JSON has no inf: null
    assert served_values == pytest.approx([t.value for t in local.trials], rel=1e-12)
    assert [t["status"] for t in trials] == [t.status for t in local.trials]
    import ray  # the worker's Ray: the test session's one node

    assert {t["node"] for t in trials} == {ray.get_runtime_context().get_node_id()}
    assert done["best_trial"]["value"] == pytest.approx(local.best_value, rel=1e-12)
    assert done["gradient_evals"] == pytest.approx(local.gradient_evals)
    assert [int(line.split('"number": ')[1].split(",")[0]) for line in events.splitlines()
            if line.startswith("data") and '"number"' in line] == list(range(len(trials)))
    assert '"status": "succeeded"' in events.rstrip().splitlines()[-1]  # the stream ends with the final status
    if method == "metagrad":
        with served.db.read() as session:
            steps = session.scalars(select(MetagradStep).where(MetagradStep.job_id == job["id"])).all()
        assert len(steps) == sum("dvalue_dlr" in t["metrics"] for t in trials) > 0
        assert all(s.dvalue_dlr == next(t for t in trials if t["number"] == s.trial_number)["metrics"]["dvalue_dlr"]
                   for s in steps)


def test_cancel_stops_a_running_job_within_five_seconds(served, worker):
    client = served.client()
    slow = {"objective": "mlp-digits", "method": "tpe", "budget": {"inner_steps": 100, "trials": 500}}
    job = client.post("/v1/jobs", json=slow).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job['id']}").json()["trials"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    asked = time.monotonic()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    done = wait_for(client, job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - asked < 5.0
    assert 2 <= done["trials"] < 500


def run_worker(url: str, tmp_path, lease: float = 2.0) -> subprocess.Popen:
    env = {**os.environ, "METATUNE_DATABASE_URL": url, "METATUNE_LEASE_SECONDS": str(lease),
           "METATUNE_HEARTBEAT_SECONDS": "0.5", "METATUNE_POLL_SECONDS": "0.2", "OMP_NUM_THREADS": "1",
           "METATUNE_OUTPUT_DIR": str(tmp_path / "out"), "METATUNE_RAY_DIR": str(tmp_path / "r")}
    return subprocess.Popen([sys.executable, "-m", "metatune.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_a_killed_workers_job_is_resumed_without_losing_or_repeating_a_trial(database_url, tmp_path):
    upgrade(database_url)
    db = Database(database_url)
    settings = Settings(database_url=database_url, max_gradient_evals=1e7)
    from metatune_service.schemas import JobCreate
    from metatune_service.validation import normalise

    spec = normalise(JobCreate(objective="mlp-digits", method="tpe", budget={"inner_steps": 100, "trials": 40}),
                     settings)
    [job] = crud.create_jobs(db, owner="alice", specs=[spec]).jobs
    first = run_worker(database_url, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while len(crud.list_trials(db, job_id=job.id)) < 6:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its embedded Ray, without warning
        first.wait()
    before = {t.number: (t.lr, t.momentum, t.value) for t in crud.list_trials(db, job_id=job.id)}
    second = run_worker(database_url, tmp_path)
    try:
        deadline = time.monotonic() + 180
        while crud.get_job(db, job_id=job.id).status != "succeeded":
            assert time.monotonic() < deadline, crud.get_job(db, job_id=job.id).error
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    after = crud.list_trials(db, job_id=job.id)
    assert [t.number for t in after] == list(range(40))  # every trial once: none lost, none repeated
    assert {t.number: (t.lr, t.momentum, t.value) for t in after if t.number in before} == before
    finished = crud.get_job(db, job_id=job.id)
    assert finished.attempts == 2 and finished.gradient_evals == pytest.approx(40 * 101)
    db.dispose()


def test_metatune_serve_and_submit_end_to_end(tmp_path):
    """The real command: `metatune serve` on a SQLite file, `metatune submit --wait` against it."""
    port = free_port()
    env = {**os.environ, "METATUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}", "METATUNE_API_TOKENS": TOKENS,
           "METATUNE_OUTPUT_DIR": str(tmp_path / "out"), "METATUNE_RAY_DIR": str(tmp_path / "r"), "OMP_NUM_THREADS": "1",
           "METATUNE_SERVER": f"http://127.0.0.1:{port}", "METATUNE_TOKEN": "token-alice"}
    server = subprocess.Popen([sys.executable, "-m", "metatune.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "metatune serve: http://127.0.0.1" in server.stdout.readline()
        spec = tmp_path / "job.json"
        spec.write_text(json.dumps({**QUAD, "method": "random"}))
        for _ in range(100):  # the port opens once the app has started
            done = subprocess.run([sys.executable, "-m", "metatune.cli", "jobs"], env=env, capture_output=True, text=True)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        out = subprocess.run([sys.executable, "-m", "metatune.cli", "submit", str(spec), "--wait"], env=env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert "succeeded: 8 trials, 248 gradient evaluations, best lr" in out.stdout
        bad = subprocess.run([sys.executable, "-m", "metatune.cli", "submit", str(spec), "--token", "nope"], env=env,
                             capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "401" in bad.stderr
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        server.stdout.close()


def test_a_comparison_runs_as_jobs_and_serves_the_compare_table_and_plots(served, worker):
    client = served.client()
    body = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}, "methods": ["tpe", "random"],
            "seeds": 2, "budget": {"inner_steps": 30, "gradient_evals": 31 * 6}}
    created = client.post("/v1/comparisons", json=body).json()
    assert len(created["jobs"]) == 4 and {(j["method"], j["seed"]) for j in created["jobs"]} == {
        (m, s) for m in ("tpe", "random") for s in (0, 1)}
    assert client.get(f"/v1/comparisons/{created['id']}/plots/plane.png").status_code == 409
    deadline = time.monotonic() + 120
    while (state := client.get(f"/v1/comparisons/{created['id']}").json())["table"] is None:  # a worker's
        assert time.monotonic() < deadline and state["status"] != "failed"
        time.sleep(0.3)
    assert state["status"] == "succeeded"
    objective = mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=30)
    local = mt.compare(objective, ["tpe", "random"], 31 * 6, seeds=[0, 1])
    served_rows = {row["method"]: row for row in state["table"]["summary"]}
    for row in local.summary():
        assert served_rows[row["method"]]["best_value_median"] == pytest.approx(row["best_value_median"], rel=1e-12)
        reach = served_rows[row["method"]]["evals_to_target_median"]
        assert (math.inf if reach is None else reach) == pytest.approx(row["evals_to_target_median"])
    assert "| tpe |" in state["table"]["markdown"]
    png = client.get(state["plots"][0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert client.get(f"/v1/comparisons/{created['id']}/plots/other.png").status_code == 404
    assert served.client(owner="bob").get(f"/v1/comparisons/{created['id']}").status_code == 404
    bad = client.post("/v1/comparisons", json={**body, "seeds": [1, 1]})
    assert bad.status_code == 422 and "distinct seeds" in bad.json()["detail"]
