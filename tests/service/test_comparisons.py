"""A comparison's table and plots are built by a worker once its last job has ended; reading
a comparison only reads. Jobs are run here in-process (``mt.tune``) and recorded through the
worker's write path, so no Ray is needed."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta

import pytest

import metatune as mt
from metatune_service import crud
from metatune_service.models import utcnow
from metatune_service.status import JobStatus
from metatune_service.worker import Worker

OBJECTIVE = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}}
# Methods in the order of the comparison's jobs (by name): the table's target is the median best
# value of the first method other than metagrad, in that order.
BODY = {**OBJECTIVE, "methods": ["random", "tpe"], "seeds": 1,
        "budget": {"inner_steps": 30, "gradient_evals": 31 * 6}}


def local_objective() -> mt.objectives.Objective:
    return mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=30)


def run_next_job_here(db) -> str:
    """Claim the oldest queued job, run it with ``mt.tune`` and record it as a worker does."""
    job = crud.claim_job(db, worker="here", lease_seconds=600, max_attempts=3)
    result = mt.tune(local_objective(), job.method, job.spec["budget"]["gradient_evals"], seed=job.seed)
    assert crud.write_trials(db, job_id=job.id, worker="here", trials=result.trials, lambda_max=None)
    crud.finish_job(db, job_id=job.id, worker="here", status=JobStatus.SUCCEEDED)
    return job.id


def assert_table_is_compare_s(table: dict, methods: list[str]) -> None:
    local = mt.compare(local_objective(), methods, 31 * 6, seeds=[0])
    served = {row["method"]: row for row in table["summary"]}
    assert set(served) == set(methods)
    for row in local.summary():
        best = served[row["method"]]["best_value_median"]
        assert best == pytest.approx(row["best_value_median"], rel=1e-12)
        reach = served[row["method"]]["evals_to_target_median"]
        assert (math.inf if reach is None else reach) == pytest.approx(row["evals_to_target_median"])
    assert table["target"] == pytest.approx(local.target, rel=1e-12)


def test_reading_an_ended_comparison_builds_and_writes_nothing_until_a_worker_does(served):
    client = served.client()
    created = client.post("/v1/comparisons", json=BODY).json()
    run_next_job_here(served.db)
    in_a_minute = utcnow() + timedelta(minutes=1)
    assert crud.comparisons_to_build(served.db, ended_before=in_a_minute) == []  # one job is open
    run_next_job_here(served.db)
    state = client.get(f"/v1/comparisons/{created['id']}").json()
    assert state["status"] == "succeeded" and state["table"] is None and state["plots"] == []
    plane = client.get(f"/v1/comparisons/{created['id']}/plots/plane.png")
    assert plane.status_code == 409 and "worker" in plane.json()["detail"]
    assert crud.get_comparison(served.db, comparison_id=created["id"])[0].table is None
    assert not (served.settings.output_dir / "comparisons").exists()
    Worker(served.db, served.settings).build_comparison(created["id"])
    state = client.get(f"/v1/comparisons/{created['id']}").json()
    assert_table_is_compare_s(state["table"], ["random", "tpe"])
    assert "| tpe |" in state["table"]["markdown"]
    assert sorted(state["plots"]) == sorted(f"/v1/comparisons/{created['id']}/plots/{n}.png"
                                            for n in ("convergence", "plane"))
    for path in state["plots"]:
        png = client.get(path)
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert not [p for p in (served.settings.output_dir / "comparisons").rglob(".building-*")]


def test_a_comparison_whose_last_job_is_cancelled_in_the_queue_is_built_by_an_idle_worker(served):
    client = served.client()
    created = client.post("/v1/comparisons", json=BODY).json()
    ran = run_next_job_here(served.db)
    (queued,) = [j["id"] for j in created["jobs"] if j["id"] != ran]
    assert client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"  # no worker runs it
    settings = served.settings.model_copy(update={"lease_seconds": 0.0})  # no grace for the last job's worker
    stop = threading.Event()
    thread = threading.Thread(target=Worker(served.db, settings).run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (state := client.get(f"/v1/comparisons/{created['id']}").json())["table"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert state["status"] == "succeeded" and len(state["plots"]) == 2
    method = next(j["method"] for j in created["jobs"] if j["id"] == ran)
    assert_table_is_compare_s(state["table"], [method])


def test_a_comparison_with_no_succeeded_job_gets_no_table(served):
    client = served.client()
    created = client.post("/v1/comparisons", json=BODY).json()
    for job in created["jobs"]:
        client.post(f"/v1/jobs/{job['id']}/cancel")
    assert crud.comparisons_to_build(served.db, ended_before=utcnow() + timedelta(minutes=1)) == []
    state = client.get(f"/v1/comparisons/{created['id']}").json()
    assert state["status"] == "cancelled" and state["table"] is None and state["plots"] == []
    assert client.get(f"/v1/comparisons/{created['id']}/plots/plane.png").status_code == 409
