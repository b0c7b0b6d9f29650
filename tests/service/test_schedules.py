"""Schedules through the service: ``space.schedule`` = ``{"knots": K}`` or ``{"shape":
"warmup-cosine"}`` is validated as the Python API validates it (plus the server's limit on
hyperparameters), stored with the job, and its trials are stored and served in the point's JSON
form (a list of K knot values per η and β, a warm-up + cosine point's fractions), with
metagrad's meta-gradient per knot. Values and meta-gradients are checked against plain
momentum-SGD runs along an independently computed η_t, β_t path (and central finite
differences). Most jobs run here in-process and are recorded through the worker's write path;
one runs on Ray through a worker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

import metatune as mt
from metatune.point import Point
from metatune.tuners import TuneResult
from metatune_service import crud
from metatune_service.models import Job, MetagradStep
from metatune_service.status import JobStatus
from metatune_service.worker import Worker

from .conftest import wait_for

STEPS = 30
OBJECTIVE = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}}
KNOTS_JOB = {**OBJECTIVE, "method": "metagrad", "space": {"schedule": {"knots": 3}},
             "budget": {"inner_steps": STEPS, "gradient_evals": 31 * 12}}
WARMUP_JOB = {**OBJECTIVE, "method": "tpe", "space": {"schedule": {"shape": "warmup-cosine"}},
              "budget": {"inner_steps": STEPS, "gradient_evals": 31 * 6}}


def local_objective() -> mt.objectives.Objective:
    return mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=STEPS)


def run_next_job_here(db) -> str:  # noqa: ANN001
    """Claim the oldest queued job, run its stored spec in this process and record it as a worker does."""
    job = crud.claim_job(db, worker="here", lease_seconds=600, max_attempts=3)
    result = mt.tune(job.tuning_job().with_changes(backend="local"))
    assert crud.write_trials(db, job_id=job.id, worker="here", trials=result.trials, lambda_max=None)
    crud.finish_job(db, job_id=job.id, worker="here", status=JobStatus.SUCCEEDED)
    return job.id


def knots_path(values: list[float], *, log: bool) -> torch.Tensor:
    """η_t (``log``: log-linear) or β_t (linear) over T steps from K knots at t = k(T − 1)/(K − 1),
    by numpy's interpolation (independent of metatune.schedule)."""
    at = np.linspace(0, STEPS - 1, len(values)) if len(values) > 1 else np.zeros(1)
    ys = np.log(values) if log else np.asarray(values)
    path = np.interp(np.arange(STEPS), at, ys) if len(values) > 1 else np.full(STEPS, ys[0])
    return torch.tensor(np.exp(path) if log else path, dtype=torch.float64)


def warmup_cosine_path(peak: float, warmup: float, final: float) -> torch.Tensor:
    """η_t of the warm-up + cosine family as DESIGN states it: linear to the peak over
    W = round(warmup·T) steps, then a cosine down to final·peak at the last step."""
    ramp = min(round(warmup * STEPS), STEPS - 1)
    rates = [peak * (t + 1) / ramp if t < ramp else
             peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (t - ramp) / (STEPS - 1 - ramp))))
             for t in range(STEPS)]
    return torch.tensor(rates, dtype=torch.float64)


def unrolled_value(lr: torch.Tensor, momentum: torch.Tensor, seed: int = 0) -> float:
    """ℓ_val(θ_T) of plain momentum SGD along per-step η_t, β_t: the oracle of a stored value."""
    target = local_objective()
    run = mt.unroll(target.train_loss, target.init_params(seed), lr, momentum, STEPS, target.batches(seed, STEPS))
    return float(target.val_loss(run.params))


def knots_value(lr: list[float], momentum: list[float]) -> float:
    return unrolled_value(knots_path(lr, log=True), knots_path(momentum, log=False))


def finite_differences(lr: list[float], momentum: list[float], h: float = 1e-6) -> tuple[list[float], list[float]]:
    """∂ℓ/∂η_k and ∂ℓ/∂β_k at each knot by central differences (relative steps in η)."""
    def moved(values: list[float], k: int, step: float) -> list[float]:
        return [v + step if i == k else v for i, v in enumerate(values)]

    dlr = [(knots_value(moved(lr, k, h * lr[k]), momentum) - knots_value(moved(lr, k, -h * lr[k]), momentum))
           / (2 * h * lr[k]) for k in range(len(lr))]
    dmomentum = [(knots_value(lr, moved(momentum, k, h)) - knots_value(lr, moved(momentum, k, -h))) / (2 * h)
                 for k in range(len(momentum))]
    return dlr, dmomentum


def count_jobs(served) -> int:  # noqa: ANN001
    with served.db.read() as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_a_metagrad_knots_job_serves_k_knots_and_a_meta_gradient_per_knot(served):
    client = served.client()
    created = client.post("/v1/jobs", json=KNOTS_JOB)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["schedule"] == {"knots": 3, "shape": "knots"} and job["spec"]["space"]["schedule"] == {"knots": 3}
    run_next_job_here(served.db)
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    local = mt.tune(local_objective(), "metagrad", 31 * 12, seed=0, schedule=3)
    assert len(trials) == len(local.trials) > 3
    assert all(len(t["lr"]) == len(t["momentum"]) == 3 and t["schedule"] is None for t in trials)
    assert [Point.from_json(t) for t in trials] == [t.point for t in local.trials]
    stepped = [(t, mine) for t, mine in zip(trials, local.trials) if mine.chain and mine.chain.gradient]
    assert stepped and len(stepped) < len(trials)  # line-search trials have no meta-gradient
    for trial, mine in stepped:
        gradient = mine.chain.gradient
        assert trial["meta_gradient"]["lr"] == pytest.approx(list(gradient.dlr), rel=1e-12)
        assert trial["meta_gradient"]["momentum"] == pytest.approx(list(gradient.dmomentum), rel=1e-12)
        assert trial["meta_gradient"]["growth_rate"] == pytest.approx(gradient.growth_rate, rel=1e-12)
    assert all(t["meta_gradient"] is None for t in trials if t["number"] not in {s["number"] for s, _ in stepped})
    first = stepped[0][0]
    assert first["value"] == pytest.approx(knots_value(first["lr"], first["momentum"]), rel=1e-9)
    dlr, dmomentum = finite_differences(first["lr"], first["momentum"])
    assert first["meta_gradient"]["lr"] == pytest.approx(dlr, rel=1e-4)
    assert first["meta_gradient"]["momentum"] == pytest.approx(dmomentum, rel=1e-4)
    assert client.get(f"/v1/jobs/{job['id']}/trials/{first['number']}").json() == first
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and len(done["best_trial"]["lr"]) == 3
    assert done["best_trial"]["value"] == pytest.approx(local.best_value, rel=1e-12)
    with served.db.read() as session:
        steps = session.scalars(select(MetagradStep).where(MetagradStep.job_id == job["id"])).all()
    by_number = {t["number"]: t for t in trials}
    assert len(steps) == len(stepped)
    for step in steps:
        trial = by_number[step.trial_number]
        assert crud.point_of(step) == Point.from_json(trial)
        assert step.meta_gradient == {k: trial["meta_gradient"][k] for k in ("lr", "momentum")}
        assert (step.lr, step.dvalue_dlr) == (trial["lr"][0], trial["meta_gradient"]["lr"][0])  # first-knot sort keys


def test_a_tpe_warmup_cosine_job_round_trips_its_shape_parameters(served):
    client = served.client()
    job = client.post("/v1/jobs", json=WARMUP_JOB).json()
    assert job["schedule"] == {"knots": 1, "shape": "warmup-cosine"}
    assert job["spec"]["space"]["schedule"] == {"shape": "warmup-cosine"}
    run_next_job_here(served.db)
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    local = mt.tune(local_objective(), "tpe", 31 * 6, seed=0, schedule={"shape": "warmup-cosine"})
    assert len(trials) == len(local.trials) == 6
    for trial, mine in zip(trials, local.trials):
        assert {k: trial[k] for k in ("lr", "momentum", "schedule")} == mine.point.to_json()
        assert trial["schedule"]["shape"] == "warmup-cosine" and trial["meta_gradient"] is None
        assert Point.from_json(trial) == mine.point
    completed = [t for t in trials if t["status"] == "completed"]
    assert completed
    for trial in completed:
        shape = trial["schedule"]
        oracle = unrolled_value(warmup_cosine_path(trial["lr"], shape["warmup"], shape["final"]),
                                torch.full((STEPS,), trial["momentum"], dtype=torch.float64))
        assert trial["value"] == pytest.approx(oracle, rel=1e-9)
    best = client.get(f"/v1/jobs/{job['id']}").json()["best_trial"]
    assert best["schedule"] == next(t["schedule"] for t in trials if t["number"] == best["number"])
    stored = crud.list_trials(served.db, job_id=job["id"])
    assert [(row.lr, row.momentum) for row in stored] == [(t["lr"], t["momentum"]) for t in trials]  # the peak


def python_refusal(method: str, schedule, steps: int = STEPS) -> str:  # noqa: ANN001
    """What ``mt.tune`` says to ``schedule`` for ``method`` on the same objective."""
    with pytest.raises(ValueError) as info:
        mt.tune(mt.objectives.get("quadratic", dim=10, kappa=100.0, steps=steps), method, 31 * 12, seed=0,
                schedule=schedule)
    return str(info.value)


BAD_SCHEDULES = [
    ("metagrad", {"knots": 0}, "greater than or equal to 1"),
    ("metagrad", {"knots": "3"}, "valid integer"),
    ("metagrad", {"knots": True}, "valid integer"),
    ("metagrad", {"knots": 2.0}, "valid integer"),
    ("metagrad", {"knot": 3}, "extra"),
    ("tpe", {"shape": "cosine"}, "'knots' or 'warmup-cosine'"),
    ("tpe", {"shape": "warmup-cosine", "knots": 3}, "space.schedule: schedule.knots=3 is invalid: expected 1"),
    ("metagrad", {"knots": STEPS + 1}, f"space.schedule: {python_refusal('metagrad', STEPS + 1)}"),
    ("grid", {"knots": 3}, f"space.schedule: {python_refusal('grid', 3)}"),
    ("metagrad", {"shape": "warmup-cosine"},
     f"space.schedule: {python_refusal('metagrad', {'shape': 'warmup-cosine'})}"),
]


@pytest.mark.parametrize(("method", "schedule", "message"), BAD_SCHEDULES,
                         ids=[f"{m}-{s}" for m, s, _ in BAD_SCHEDULES])
def test_bad_schedules_get_a_422_with_a_message_and_nothing_is_stored(served, method, schedule, message):
    response = served.client().post("/v1/jobs", json={**KNOTS_JOB, "method": method, "space": {"schedule": schedule}})
    assert response.status_code == 422
    assert message in str(response.json()["detail"])
    assert count_jobs(served) == 0


def test_knots_above_the_objectives_own_horizon_and_too_many_hyperparameters_get_a_422(served):
    client = served.client()
    default_steps = mt.objectives.get("quadratic").steps  # no budget.inner_steps: the objective's T
    above = {**OBJECTIVE, "method": "tpe", "space": {"schedule": {"knots": default_steps + 1}}}
    response = client.post("/v1/jobs", json=above)
    assert response.status_code == 422
    assert response.json()["detail"] == f"space.schedule: schedule.knots={default_steps + 1} is invalid: " \
                                         f"expected at most the inner steps T={default_steps}"
    limit = served.settings.max_hyperparameters
    knots = limit // 2 + 1  # 2·K·1 = limit + 2 for one group
    response = client.post("/v1/jobs", json={**OBJECTIVE, "method": "tpe", "space": {"schedule": {"knots": knots}}})
    assert response.status_code == 422
    assert response.json()["detail"] == (f"space: schedule={{'knots': {knots}}} over 1 parameter group(s) searches "
                                         f"{2 * knots} hyperparameters, above this server's limit {limit} "
                                         f"(fewer knots or groups)")
    grouped = {"objective": "mlp-regression", "objective_params": {"hidden": 8}, "method": "tpe",
               "space": {"groups": "layers", "schedule": {"knots": limit // 6 + 1}}}  # 3 layers: 2·K·3 > limit
    response = client.post("/v1/jobs", json=grouped)
    assert response.status_code == 422 and "over 3 parameter group(s)" in response.json()["detail"]
    assert client.post("/v1/jobs", json={**grouped, "space": {"groups": "layers", "schedule": {"knots": limit // 6}}}
                       ).status_code == 202
    assert count_jobs(served) == 1


def test_a_comparison_takes_the_schedule_to_every_job_and_plots_each_methods_best_schedule(served):
    client = served.client()
    body = {**OBJECTIVE, "methods": ["random", "tpe"], "seeds": 1, "space": {"schedule": {"knots": 2}},
            "budget": {"inner_steps": STEPS, "gradient_evals": 31 * 6}}
    refused = client.post("/v1/comparisons", json={**body, "methods": ["tpe", "grid"]})
    assert refused.status_code == 422 and refused.json()["detail"] == f"space.schedule: {python_refusal('grid', 2)}"
    assert count_jobs(served) == 0
    created = client.post("/v1/comparisons", json=body).json()
    assert [j["schedule"] for j in created["jobs"]] == [{"knots": 2, "shape": "knots"}] * 2
    assert client.get(f"/v1/comparisons/{created['id']}/plots/schedule.png").status_code == 409  # not yet built
    for _ in created["jobs"]:
        run_next_job_here(served.db)
    Worker(served.db, served.settings).build_comparison(created["id"])
    state = client.get(f"/v1/comparisons/{created['id']}").json()
    assert state["status"] == "succeeded" and "schedule: 2 knots" in state["table"]["markdown"]
    assert sorted(p.rsplit("/", 1)[-1] for p in state["plots"]) == ["convergence.png", "plane.png", "schedule.png"]
    png = client.get(f"/v1/comparisons/{created['id']}/plots/schedule.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    local = mt.compare(local_objective(), ["random", "tpe"], 31 * 6, seeds=[0], schedule=2)
    served_rows = {row["method"]: row for row in state["table"]["summary"]}
    for row in local.summary():
        assert served_rows[row["method"]]["best_value_median"] == pytest.approx(row["best_value_median"], rel=1e-12)
    constant = client.post("/v1/comparisons", json={**body, "space": {}}).json()
    missing = client.get(f"/v1/comparisons/{constant['id']}/plots/schedule.png")
    assert missing.status_code == 404 and "convergence" in missing.json()["detail"]


def test_a_schedule_job_runs_on_ray_and_its_trials_are_stored_with_their_knots(served, worker):
    client = served.client()
    body = {**KNOTS_JOB, "space": {"schedule": {"knots": 2}}, "budget": {"inner_steps": STEPS,
                                                                         "gradient_evals": 31 * 8}}
    job = client.post("/v1/jobs", json=body).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    local: TuneResult = mt.tune(local_objective(), "metagrad", 31 * 8, seed=0, schedule=2)
    rows = crud.list_trials(served.db, job_id=job["id"])
    assert len(rows) == len(local.trials) > 2
    assert [crud.point_of(row) for row in rows] == [t.point for t in local.trials]
    assert all(len(row.point["lr"]) == len(row.point["momentum"]) == 2 for row in rows)
    assert all((row.lr, row.momentum) == (row.point["lr"][0], row.point["momentum"][0]) for row in rows)
    assert [row.value for row in rows] == pytest.approx([t.value for t in local.trials], rel=1e-12)
    with served.db.read() as session:
        steps = session.scalars(select(MetagradStep).where(MetagradStep.job_id == job["id"])).all()
    assert steps and all(len(s.meta_gradient["lr"]) == len(s.meta_gradient["momentum"]) == 2 for s in steps)
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    assert sum(t["meta_gradient"] is not None for t in trials) == len(steps)
    assert all(math.isfinite(t["value"]) for t in trials if t["status"] == "completed")
