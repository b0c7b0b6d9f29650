"""The REST API through a real HTTP client: validation, auth and ownership, pagination."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from sqlalchemy import func, select

from metatune.point import Point
from metatune.tuners import Trial as LibraryTrial
from metatune_service import crud
from metatune_service.models import Job
from metatune_service.status import JobStatus
from metatune_service.validation import check_objective
from metatune_service.worker import JobWriter

QUAD = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0}, "method": "tpe",
        "budget": {"inner_steps": 30, "trials": 5}}


def count_jobs(served) -> int:
    with served.db.read() as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_health_and_docs_are_open_and_everything_else_needs_a_token(served):
    anonymous = served.client(owner=None)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/docs").status_code == 200
    assert "/v1/jobs" in anonymous.get("/openapi.json").json()["paths"]
    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/objectives"),
                         ("GET", "/v1/jobs/x"), ("POST", "/v1/comparisons")):
        response = anonymous.request(method, path, json=QUAD)
        assert response.status_code == 401 and "bearer" in response.json()["detail"].lower()
    wrong = served.client(owner="mallory")
    assert wrong.get("/v1/jobs").status_code == 401
    assert count_jobs(served) == 0


def test_a_job_is_queued_with_its_defaults_filled_in(served):
    response = served.client().post("/v1/jobs", json={"objective": "quadratic", "method": "random"})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["owner"] == "alice" and job["trials"] == 0
    spec = job["spec"]
    assert spec["budget"] == {"gradient_evals": served.settings.default_gradient_evals, "inner_steps": 300}
    space = __import__("metatune").objectives.get("quadratic").space  # the objective's own default space
    assert spec["space"]["lr"] == {"low": space.lr_low, "high": space.lr_high, "log": space.lr_log}
    assert spec["space"]["momentum"] == {"low": space.momentum_low, "high": space.momentum_high} and spec["seed"] == 0
    assert served.client().get(f"/v1/jobs/{job['id']}").json() == job  # the answer is the job as stored


BAD_SPECS = [
    ({"method": "tpe"}, "objective"),
    ({"objective": "nope", "method": "tpe"}, "objective='nope' is not registered"),
    ({"objective": "quadratic", "method": "sideways"}, "method"),
    ({"objective": "quadratic", "method": "tpe", "objective_params": {"dim": "ten"}}, "objective_params.dim"),
    ({"objective": "quadratic", "method": "tpe", "objective_params": {"dimension": 3}}, "not a parameter"),
    ({"objective": "quadratic", "method": "tpe", "objective_params": {"device": "cuda"}}, "not a parameter"),
    ({"objective": "quadratic", "method": "tpe", "objective_params": {"dim": 0}}, "dim"),
    ({"objective": "quadratic", "method": "tpe", "objective_params": {"dim": 200_000}}, "exceeds this server's limit"),
    ({"objective": "quadratic", "method": "tpe", "space": {"lr": {"low": 0.5, "high": 0.1}}}, "low=0.5 must be below"),
    ({"objective": "quadratic", "method": "tpe", "space": {"lr": {"low": 0, "high": 0.1}}}, "greater than 0"),
    ({"objective": "quadratic", "method": "tpe", "space": {"momentum": {"low": 0.1, "high": 1.0}}}, "less than 1"),
    ({"objective": "quadratic", "method": "tpe", "budget": {"gradient_evals": -5}}, "greater than 0"),
    ({"objective": "quadratic", "method": "tpe", "budget": {"gradient_evals": 1e9}}, "exceeds this server's limit"),
    ({"objective": "quadratic", "method": "tpe", "budget": {"gradient_evals": 10}}, "below one training run"),
    ({"objective": "quadratic", "method": "tpe", "budget": {"inner_steps": 10**6}}, "inner_steps"),
    ({"objective": "quadratic", "method": "tpe", "resources": {"gpu": 100}}, "exceed this server's limits"),
    ({"objective": "quadratic", "method": "tpe", "resources": {"cpu": 0}}, "greater than 0"),
    ({"objective": "quadratic", "method": "metagrad", "options": {"mode": "sideways"}}, "options.mode"),
    ({"objective": "quadratic", "method": "metagrad", "options": {"import": "os"}}, "options.import"),
    ({"objective": "quadratic", "method": "tpe", "options": {"starts": 2}}, "options.starts"),
    ({"objective": "quadratic", "method": "tpe", "code": "import os"}, "code"),
    ({"objective": "quadratic", "method": "tpe", "seed": 1.7}, "seed"),
    # strict types: no string or boolean is coerced into a number
    ({"objective": "quadratic", "method": "tpe", "budget": {"gradient_evals": "1000"}}, "'gradient_evals'], 'msg': 'Input should be a valid number'"),
    ({"objective": "quadratic", "method": "tpe", "seed": "7"}, "seed"),
    ({"objective": "quadratic", "method": "tpe", "concurrency": True}, "concurrency"),
    ({"objective": "quadratic", "method": "tpe", "resources": {"cpu": "2"}}, "'cpu'], 'msg': 'Input should be a valid number'"),
    ({"objective": "quadratic", "method": "tpe", "space": {"lr": {"low": "0.1", "high": 1.0}}}, "'low'], 'msg': 'Input should be a valid number'"),
    # NaN and ±Infinity (Python's JSON parser reads them) are not numbers here
    ({"objective": "quadratic", "method": "tpe", "space": {"lr": {"low": 0.001, "high": float("inf")}}}, "finite number"),
    ({"objective": "quadratic", "method": "metagrad", "options": {"max_amplification": float("inf")}}, "finite number"),
    ({"objective": "quadratic", "method": "tpe", "budget": {"gradient_evals": float("nan")}}, "finite number"),
    ({"objective": "quadratic", "method": "tpe", "resources": {"gpu": float("-inf")}}, "finite number"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_specs_get_422_with_a_message_and_nothing_is_stored(served, spec, message):
    """Each bad spec is refused with a message naming what to change (a string or boolean where
    a number goes too: the request models are strict), and nothing is stored."""
    body = json.dumps(spec)  # Python writes NaN and Infinity as the bare words its parser reads
    response = served.client().post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert message in str(response.json()["detail"])
    assert count_jobs(served) == 0


def test_an_objective_checked_once_is_remembered_for_its_parameters_only():
    """Validation builds each (objective, parameters) once: the same parameters give the same
    (frozen) objective, other parameters their own."""
    small, again, large = (check_objective("quadratic", params) for params in ({"dim": 3}, {"dim": 3}, {"dim": 5}))
    assert again is small and large is not small
    assert (small.init_params(0)["x"].shape, large.init_params(0)["x"].shape) == ((3,), (5,))


def test_an_oversized_body_is_refused_with_413(served):
    body = {**QUAD, "objective_params": {f"p{i}": i for i in range(20_000)}}
    response = served.client().post("/v1/jobs", json=body)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]
    assert count_jobs(served) == 0


def test_a_chunked_body_is_refused_with_411(served):
    def chunks():
        yield b'{"objective": "quadratic", '
        yield b'"method": "tpe"}'

    response = served.client().post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]
    assert count_jobs(served) == 0


@pytest.mark.parametrize("seeds", [10**12, 0, [1, 1], [2**40]])
def test_a_comparison_with_bad_seeds_is_refused_before_anything_is_built(served, seeds):
    body = {"objective": "quadratic", "methods": ["tpe"], "seeds": seeds}
    response = served.client().post("/v1/comparisons", json=body)
    assert response.status_code == 422 and "seeds" in response.json()["detail"]
    assert count_jobs(served) == 0


def test_other_owners_get_404_on_everything_of_a_job(served):
    job = served.client().post("/v1/jobs", json=QUAD).json()
    bob = served.client(owner="bob")
    for method, path in (("GET", ""), ("GET", "/trials"), ("GET", "/trials/0"), ("POST", "/cancel"),
                         ("GET", "/events")):
        assert bob.request(method, f"/v1/jobs/{job['id']}{path}").status_code == 404
    assert bob.get("/v1/jobs").json()["total"] == 0
    assert served.client().get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # bob's cancel did nothing


def test_stored_tokens_authenticate_by_hash(served):
    token = crud.create_token(served.db, owner="carol")
    with served.db.read() as session:
        from metatune_service.models import ApiToken

        stored = session.scalars(select(ApiToken)).all()
    assert [t.owner for t in stored] == ["carol"] and token not in {t.token_hash for t in stored}
    carol = served.client(owner=None, headers={"Authorization": f"Bearer {token}"})
    job = carol.post("/v1/jobs", json=QUAD).json()
    assert job["owner"] == "carol"


def test_lists_are_paginated_and_filtered(served):
    client = served.client()
    for method in ("tpe", "random", "tpe", "grid", "tpe"):
        assert client.post("/v1/jobs", json={**QUAD, "method": method}).status_code == 202
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/v1/jobs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    ids = [j["id"] for page in (first, second, third) for j in page["items"]]
    assert first["total"] == 5 and len(set(ids)) == 5 and third["next_cursor"] is None
    created = [j["created_at"] for page in (first, second, third) for j in page["items"]]
    assert created == sorted(created, reverse=True)
    tpe = client.get("/v1/jobs", params={"method": "tpe"}).json()
    assert tpe["total"] == 3 and {j["method"] for j in tpe["items"]} == {"tpe"}
    assert client.get("/v1/jobs", params={"status": "running"}).json()["total"] == 0
    assert client.get("/v1/jobs", params={"status": "sideways"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "abc"}).status_code == 400


def test_a_queued_job_is_cancelled_at_once(served):
    client = served.client()
    job = client.post("/v1/jobs", json=QUAD).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    events = client.get(f"/v1/jobs/{job['id']}/events").text
    assert events.count("event: status") == 1 and '"status": "cancelled"' in events


def test_a_cancel_with_no_body_and_no_content_length_cancels(served):
    """`curl -X POST …/cancel` sends neither a body nor Content-Length; it used to get a 411
    and cancel nothing."""
    import http.client

    job = served.client().post("/v1/jobs", json=QUAD).json()
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    connection.putrequest("POST", f"/v1/jobs/{job['id']}/cancel")
    connection.putheader("Authorization", "Bearer token-alice")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert json.loads(response.read())["status"] == "cancelled"
    connection.close()


def test_two_hundred_concurrent_submissions_make_two_hundred_jobs(served):
    client = served.client(limits=__import__("httpx").Limits(max_connections=50))

    def submit(seed: int) -> int:
        return client.post("/v1/jobs", json={**QUAD, "seed": seed}).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(submit, range(200)))
    assert codes == [202] * 200
    with served.db.read() as session:
        seeds = session.scalars(select(Job.seed)).all()
    assert sorted(seeds) == list(range(200))


def test_objectives_are_listed_with_their_parameters(served):
    names = {o["name"]: o for o in served.client().get("/v1/objectives").json()}
    assert {"quadratic", "mlp-digits"} <= set(names)
    assert names["quadratic"]["parameters"]["dim"] == 50 and "device" not in names["quadratic"]["parameters"]


def test_a_bare_token_is_never_its_owners_name():
    """METATUNE_API_TOKENS="s3cret" used to make "s3cret" the owner, shown in every job
    response; its owner is now a name derived from its SHA-256, and owner:token pairs keep theirs."""
    import hashlib

    from metatune_service.core.config import Settings

    tokens = Settings(database_url="sqlite://", api_tokens="s3cret, alice:token-a").tokens()
    assert tokens == {"s3cret": "token-" + hashlib.sha256(b"s3cret").hexdigest()[:12], "token-a": "alice"}
    assert all(token not in owner for token, owner in tokens.items())


@pytest.mark.parametrize("path", ["/v1/jobs/{id}/trials/47777283706521419776", "/v1/jobs/{id}/trials?after=99999999999999999999",
                                  "/v1/jobs?offset=99999999999999999999", "/v1/jobs?cursor=99999999999999999999",
                                  "/v1/jobs/{id}/trials/-1"])
def test_integers_past_the_databases_range_get_a_4xx_not_a_500(served, path):
    """A trial number, offset, after or cursor past 2³¹ − 1 is refused before it reaches the
    database (it used to overflow there: a 500)."""
    client = served.client()
    job = client.post("/v1/jobs", json={"objective": "quadratic", "method": "random",
                                        "budget": {"gradient_evals": 2000}}).json()
    response = client.get(path.format(id=job["id"]))
    assert 400 <= response.status_code < 500, response.text


RAY_NODE = "3f1a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4"  # 56 hex digits, as Ray's node ids


def node_trial(number: int, node: str | None) -> LibraryTrial:
    return LibraryTrial(number=number, point=Point.scalar(0.1 * (number + 1), 0.5), value=0.25, diverged=False,
                        gradient_evals=31.0, cumulative_evals=31.0 * (number + 1), wall_time=0.1,
                        spectral_radius=0.5, stable=True, node=node)


def test_a_trials_ray_node_is_served_everywhere_a_trial_is_and_replayed_to_the_library(served):
    client = served.client()
    job_id = client.post("/v1/jobs", json=QUAD).json()["id"]
    assert crud.claim_job(served.db, worker="w", lease_seconds=60, max_attempts=3).id == job_id
    writer = JobWriter(served.db, job_id, "w", batch=10, interval=60.0)  # the worker's one path into the database
    for number, node in enumerate((RAY_NODE, None, RAY_NODE[::-1])):
        writer(node_trial(number, node))
    writer.flush()
    crud.finish_job(served.db, job_id=job_id, worker="w", status=JobStatus.SUCCEEDED)
    expected = [RAY_NODE, None, RAY_NODE[::-1]]
    assert [t["node"] for t in client.get(f"/v1/jobs/{job_id}/trials").json()["items"]] == expected
    assert [client.get(f"/v1/jobs/{job_id}/trials/{n}").json()["node"] for n in range(3)] == expected
    events = client.get(f"/v1/jobs/{job_id}/events", params={"interval": 0.05}).text  # the job has ended: finite
    trial_events = [json.loads(line[5:]) for line in events.splitlines()
                    if line.startswith("data:") and '"number"' in line]
    assert [(e["number"], e["node"]) for e in trial_events] == list(enumerate(expected))
    assert [t.node for t in crud.library_trials(served.db, job_id=job_id)] == expected
    schema = client.get("/openapi.json").json()["components"]["schemas"]["TrialPublic"]
    assert "node" in schema["required"] and "Ray node" in schema["properties"]["node"]["description"]
    assert {v.get("type") for v in schema["properties"]["node"]["anyOf"]} == {"string", "null"}
