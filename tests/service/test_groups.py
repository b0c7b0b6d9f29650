"""Per-group spaces through the service: a job with ``space.groups`` runs on Ray, stores an η and
a β per group (checked against an independent re-run with ``mt.unroll``), refuses what the
Python API refuses, and ``metatune compare --server --groups`` passes them on."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import select

import metatune as mt
from metatune.point import Point
from metatune.tuners.groups import resolve_groups
from metatune_service import crud
from metatune_service.models import Job, MetagradStep

from .conftest import wait_for

SMALL = {"hidden": 8}
STEPS, BUDGET = 20, 600
JOB = {"objective": "mlp-regression", "objective_params": SMALL, "method": "metagrad",
       "space": {"groups": "layers"}, "budget": {"inner_steps": STEPS, "gradient_evals": BUDGET}}


def objective() -> mt.objectives.Objective:
    return mt.objectives.get("mlp-regression", **SMALL, steps=STEPS)


def unrolled_value(lr: dict[str, float], momentum: dict[str, float], seed: int = 0) -> float:
    """ℓ_val(θ_T) of a plain momentum-SGD run at the point: the independent check of a stored value."""
    target = objective()
    run = mt.unroll(target.train_loss, target.init_params(seed), lr, momentum, STEPS, target.batches(seed, STEPS))
    return float(target.val_loss(run.params))


def test_a_per_group_job_stores_an_eta_and_a_beta_per_group_that_unroll_reproduces(served, worker):
    client = served.client()
    job = client.post("/v1/jobs", json=JOB).json()
    assert job["groups"] == "layers" and job["spec"]["space"]["groups"] == "layers"
    events = client.get(f"/v1/jobs/{job['id']}/events", params={"interval": 0.1}).text
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    groups = list(resolve_groups("layers", objective().init_params(0)))
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    assert len(trials) > 5 and all(list(t["lr"]) == list(t["momentum"]) == groups for t in trials)
    local = mt.tune(objective(), "metagrad", BUDGET, seed=0, groups="layers")
    assert [(t["lr"], t["momentum"]) for t in trials] == [(t.lr, t.momentum) for t in local.trials]
    completed = [t for t in trials if t["status"] == "completed"]
    assert completed and all(t["value"] == pytest.approx(unrolled_value(t["lr"], t["momentum"]), rel=1e-5)
                             for t in completed)
    best = done["best_trial"]
    assert best["value"] == min(t["value"] for t in completed) and list(best["lr"]) == groups
    assert client.get(f"/v1/jobs/{job['id']}/trials/{best['number']}").json()["lr"] == best["lr"]
    streamed = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data") and '"number"' in line]
    assert [t["lr"] for t in streamed] == [t["lr"] for t in trials]
    resumed = crud.library_trials(served.db, job_id=job["id"])  # what a resumed job replays
    assert [(t.lr, t.momentum) for t in resumed] == [(t.lr, t.momentum) for t in local.trials]
    assert_steps_per_group(served, job["id"], trials)


def assert_steps_per_group(served, job_id: str, trials: list[dict]) -> None:  # noqa: ANN001
    """Each meta-gradient trial is one metagrad step whose η, β and ∂ℓ/∂η, ∂ℓ/∂β are per group."""
    by_number = {t["number"]: t for t in trials}
    with served.db.read() as session:
        steps = session.scalars(select(MetagradStep).where(MetagradStep.job_id == job_id)).all()
    assert len(steps) == sum("growth_rate" in t["metrics"] for t in trials) > 0
    for step in steps:
        trial = by_number[step.trial_number]
        assert step.lr is None and step.momentum is None and step.dvalue_dlr is None  # no sort key per group
        assert crud.point_of(step) == Point.from_json(trial)
        assert step.meta_gradient == {"lr": {g: trial["metrics"][f"dvalue_dlr[{g}]"] for g in trial["lr"]},
                                      "momentum": {g: trial["metrics"][f"dvalue_dmomentum[{g}]"] for g in trial["lr"]}}
        assert step.meta_gradient == {k: trial["meta_gradient"][k] for k in ("lr", "momentum")}


def python_refusal(method: str, groups) -> str:  # noqa: ANN001
    """What ``mt.tune`` says to ``groups`` for ``method`` on the same objective."""
    with pytest.raises(ValueError) as info:
        mt.tune(objective(), method, BUDGET, seed=0, groups=groups)
    return str(info.value)


@pytest.mark.parametrize("groups", ["layers", ["0", "2", "4"]])
def test_groups_with_grid_get_a_422_with_the_python_apis_reason(served, groups):
    client = served.client()
    response = client.post("/v1/jobs", json={**JOB, "method": "grid", "space": {"groups": groups}})
    assert response.status_code == 422
    assert response.json()["detail"] == f"space.groups: {python_refusal('grid', groups)}"
    comparison = {"objective": "mlp-regression", "objective_params": SMALL, "methods": ["tpe", "grid"], "seeds": 1,
                  "space": {"groups": groups}, "budget": {"inner_steps": STEPS, "gradient_evals": BUDGET}}
    response = client.post("/v1/comparisons", json=comparison)
    assert response.status_code == 422 and "grid searches one η and one β" in response.json()["detail"]
    with served.db.read() as session:
        assert session.scalars(select(Job)).all() == []


@pytest.mark.parametrize(("groups", "message"), [
    (["0", "2"], "uncovered: ['4.weight', '4.bias']"),
    (["0", "0", "2", "4"], "space.groups: groups=['0', '0', '2', '4'] is invalid: expected distinct"),
    (["0", "2", "4", "9"], "unused: ['9']"),
    ("rows", "space.groups: groups='rows' is invalid: expected None, one of ('layers', 'tensors'), or a list"),
    ([], "space.groups: groups=[] is invalid"),
    (3, "'space', 'groups'"),  # pydantic's shape errors: the field's location
    (["0", 2], "'space', 'groups'"),
])
def test_bad_groups_get_a_422_naming_the_field(served, groups, message):
    response = served.client().post("/v1/jobs", json={**JOB, "method": "tpe", "space": {"groups": groups}})
    assert response.status_code == 422 and message in str(response.json()["detail"])


def test_a_scalar_job_echoes_no_groups(served):
    job = served.client().post("/v1/jobs", json={**JOB, "method": "tpe", "space": {}}).json()
    assert job["groups"] is None and job["spec"]["space"]["groups"] is None


def test_compare_on_a_server_passes_groups_on(served, worker, tmp_path, capsys):
    from metatune.cli import main

    code = main(["compare", "--server", served.url, "--token", "token-alice", "--objective", "mlp-regression",
                 "--param", "hidden=8", "--param", f"steps={STEPS}", "--methods", "tpe,random", "--seeds", "1",
                 "--budget", str(21 * 6), "--groups", "0,2,4", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert "| tpe |" in capsys.readouterr().out
    jobs = served.client().get("/v1/jobs").json()["items"]
    assert len(jobs) == 2 and all(j["groups"] == ["0", "2", "4"] and j["status"] == "succeeded" for j in jobs)
    best = jobs[0]["best_trial"]
    assert set(best["lr"]) == {"0", "2", "4"} and math.isfinite(best["value"])
