"""Security of the service through a real HTTP client: every route refuses callers without a
valid token and hides one owner's resources from another; no code, pickle or import path is
accepted anywhere; tokens are stored hashed, compared in constant time and never logged; SQL
metacharacters in every string field and filter are data, never SQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.engine import Engine

from metatune_service import crud
from metatune_service.api.deps import SESSION_COOKIE, UI_HEADER
from metatune_service.models import Job

from .conftest import free_port

JOB = {"objective": "quadratic", "objective_params": {"dim": 4, "kappa": 10.0}, "method": "random",
       "budget": {"inner_steps": 5, "trials": 2}}
COMPARISON = {"name": "a comparison", "objective": "quadratic", "objective_params": {"dim": 4, "kappa": 10.0},
              "methods": ["random"], "seeds": 1, "budget": {"inner_steps": 5, "trials": 2}}
BODIES = {("POST", "/v1/jobs"): JOB, ("POST", "/v1/comparisons"): COMPARISON}
"""A valid body for each operation that takes one."""

OPEN = {"GET /healthz", "GET /docs", "GET /openapi.json", "MOUNT /docs-assets", "MOUNT /ui/static",
        "GET /ui/vendor/plotly.min.js", "GET /ui/login", "POST /ui/logout"}
"""Routes that answer without a token: health, the API's documents, static files, the
dashboard's sign-in page and its sign-out (which only clears the cookie)."""
UI_PAGES = {"GET /ui", "GET /ui/", "GET /ui/jobs/{job_id}", "GET /ui/comparisons/{comparison_id}", "GET /ui/submit"}
"""Dashboard pages: signed in by the cookie only; signed out, a redirect to the sign-in page."""
UI_DATA = {"GET /ui/data/jobs/{job_id}", "GET /ui/data/comparisons/{comparison_id}"}
"""The dashboard's JSON: signed in by the cookie only; signed out, a 401."""
SIGN_IN = "POST /ui/session"
"""The token travels in the body: a wrong one is a 401, any valid one a 204 with its cookie."""


# -- the app's routes --------------------------------------------------------------------------------


def app_routes(app) -> set[str]:
    """Every route of ``app`` as "METHOD /path" (HEAD left out where GET is there), mounts as
    "MOUNT /path"; routers included with a prefix are flattened."""
    found: set[str] = set()

    def add(path: str, methods) -> None:  # noqa: ANN001
        methods = set(methods or ())
        found.update(f"{m} {path}" for m in methods - ({"HEAD"} if "GET" in methods else set()))

    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):  # a router included by FastAPI ≥ 0.120
            for context in route.effective_route_contexts():
                add(context.path, context.methods)
        elif hasattr(route, "methods"):
            add(route.path, route.methods)
        else:
            found.add(f"MOUNT {route.path}")
    return found


def the_app(served):
    return served.server.config.app


# -- owner A's resources -------------------------------------------------------------------------------


class Alice:
    """Owner A's job (claimed by a worker, one trial recorded: running) and comparison (queued)."""

    def __init__(self, served) -> None:
        from metatune.point import Point
        from metatune.tuners.records import Trial

        client = served.client("alice")
        self.job = client.post("/v1/jobs", json=JOB).json()["id"]
        job = crud.claim_job(served.db, worker="w", lease_seconds=600, max_attempts=3)
        assert job.id == self.job
        trial = Trial(0, Point.scalar(0.0123456789, 0.456789), 0.987654321, False, 6.0, 6.0, 0.01, 0.5, True)
        assert crud.write_trials(served.db, job_id=self.job, worker="w", trials=[trial], lambda_max=None)
        name = "alice-" + secrets.token_hex(8)
        created = client.post("/v1/comparisons", json={**COMPARISON, "name": name}).json()
        self.comparison, self.comparison_jobs = created["id"], [j["id"] for j in created["jobs"]]
        self.secrets = {self.job, self.comparison, *self.comparison_jobs, name, "token-alice", "0.987654321"}

    def leaked(self, text_: str, asked: str) -> set[str]:
        """A's data in ``text_`` other than what the caller put in the URL ``asked``."""
        return {s for s in self.secrets if s in text_ and s not in asked}


PATH_VALUES = {"number": "0", "name": "convergence"}


def fill(path: str, alice: Alice) -> str:
    values = {"job_id": alice.job, "comparison_id": alice.comparison, **PATH_VALUES}
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{path}: give its path parameter a value in PATH_VALUES"
    return path


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[int, httpx.Headers, str]:
    """Status, headers and body (for an event stream: its first chunk, then the stream is closed)."""
    with client.stream(method, url, **kwargs) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = next(response.iter_text(), "")
        else:
            body = response.read().decode(errors="replace")
        return response.status_code, response.headers, body


def callers(served, stored: str) -> dict[str, httpx.Client]:
    """Clients that must not get in: none, and wrong tokens of every kind (in the bearer
    header and in the dashboard's cookie)."""
    wrong = {"no token": {}, "wrong token": {"Authorization": "Bearer wrong-" + secrets.token_hex(8)},
             "a valid token's prefix": {"Authorization": "Bearer token-alic"},
             "a valid token in another case": {"Authorization": "Bearer TOKEN-ALICE"},
             "the stored hash as a token": {"Authorization": f"Bearer {crud.hash_token(stored)}"},
             "a valid token in another scheme": {"Authorization": "Basic token-alice"},
             "a bearer without a token": {"Authorization": "Bearer"},
             "a wrong cookie": {"Cookie": f"{SESSION_COOKIE}=wrong-{secrets.token_hex(8)}", UI_HEADER: "x"}}
    return {name: served.client(owner=None, headers=headers) for name, headers in wrong.items()}


def bobs(served) -> dict[str, httpx.Client]:
    """Owner B by bearer token and by the dashboard's cookie."""
    return {"bob's bearer": served.client("bob"),
            "bob's cookie": served.client(owner=None, headers={"Cookie": f"{SESSION_COOKIE}=token-bob", UI_HEADER: "x"})}


NOT_OWNER_SCOPED = {"POST /v1/jobs", "GET /v1/jobs", "POST /v1/comparisons", "GET /v1/objectives"}
"""Operations on the caller's own data (or on none): another owner gets a 2xx and nothing of A's."""


def test_every_route_refuses_strangers_and_hides_one_owners_resources_from_another(served):
    """Every operation of the OpenAPI document and every dashboard route: no token or a wrong one
    is a 401 (a redirect to the sign-in page for a page), another owner a 404 on A's resources
    and a 2xx with none of A's data elsewhere, A itself gets in; the routes walked plus the open
    ones are exactly the app's routes, and A's resources are unchanged after all of it."""
    alice = Alice(served)
    stored = crud.create_token(served.db, owner="carol")
    anonymous = served.client(owner=None)
    document = anonymous.get("/openapi.json").json()
    walked, failures = set(), []
    strangers, bob = callers(served, stored), bobs(served)
    a_bearer = served.client("alice")
    a_cookie = served.client(owner=None, headers={"Cookie": f"{SESSION_COOKIE}=token-alice", UI_HEADER: "x"})

    def check(route: str, who: str, client: httpx.Client, expected: set[int], **kwargs: Any) -> None:
        method, path = route.split(" ", 1)
        url = fill(path, alice)
        status, headers, body = call(client, method, url, **kwargs)
        if status not in expected:
            failures.append(f"{route} by {who}: {status} (expected {sorted(expected)}): {body[:200]}")
        leaked = alice.leaked(body, url) if who not in ("alice's bearer", "alice's cookie") else set()
        if leaked:
            failures.append(f"{route} by {who}: A's data {sorted(leaked)} in the response")
        if status == 303 and not headers["location"].startswith("/ui/login"):
            failures.append(f"{route} by {who}: redirected to {headers['location']}, not the sign-in page")

    for path, operations in document["paths"].items():
        for method, _ in operations.items():
            route = f"{method.upper()} {path}"
            if route in OPEN:
                continue
            walked.add(route)
            body = BODIES.get((method.upper(), path))
            kwargs = {"json": body} if body is not None else {}
            for who, client in strangers.items():
                check(route, who, client, {401}, **kwargs)
            for who, client in bob.items():
                check(route, who, client, {200, 202} if route in NOT_OWNER_SCOPED else {404}, **kwargs)
            if route != "POST /v1/jobs/{job_id}/cancel":  # A's own cancel comes last: it changes the job
                for who, client in (("alice's bearer", a_bearer), ("alice's cookie", a_cookie)):
                    expected = {409} if path.endswith(".png") else {200, 202}  # the plots exist once it ends
                    check(route, who, client, expected, **kwargs)

    for route in sorted(UI_PAGES | UI_DATA):
        walked.add(route)
        signed_out = {303} if route in UI_PAGES else {401}
        for who, client in strangers.items():
            check(route, who, client, signed_out)
        scoped = "{" in route
        check(route, "bob's bearer", bob["bob's bearer"], signed_out)  # pages take the cookie only
        check(route, "bob's cookie", bob["bob's cookie"], {404} if scoped else {200})
        check(route, "alice's cookie", a_cookie, {200})

    walked.add(SIGN_IN)
    check(SIGN_IN, "no token", anonymous, {422}, json={})
    check(SIGN_IN, "an empty token", anonymous, {422}, json={"token": ""})
    for token in ("wrong-" + secrets.token_hex(8), "token-alic", "TOKEN-ALICE", crud.hash_token(stored), " token-alice"):
        check(SIGN_IN, repr(token), anonymous, {401}, json={"token": token})
    for route in sorted(OPEN - {"MOUNT /docs-assets", "MOUNT /ui/static"}):
        check(route, "no token", anonymous, {200, 303})
    for url in ("/docs-assets/swagger-ui.css", "/ui/static/" + next(
            p.name for p in (Path(__import__("metatune_service.ui", fromlist=["x"]).__file__).parent / "static").iterdir()
            if p.is_file())):
        check("GET " + url, "no token", anonymous, {200})

    response = anonymous.post("/ui/session", json={"token": "token-bob"})
    assert response.status_code == 204 and f"{SESSION_COOKIE}=token-bob" in response.headers["set-cookie"]
    assert "HttpOnly" in response.headers["set-cookie"] and "SameSite=strict" in response.headers["set-cookie"]

    assert not failures, "\n".join(failures)
    assert walked | OPEN == app_routes(the_app(served)), "routes added without a case here, or cases for none"
    # B's cancel and everything else left A's job running with its trial; A's own cancel works
    job = a_bearer.get(f"/v1/jobs/{alice.job}").json()
    assert job["status"] == "running" and job["trials"] == 1
    with served.db.read() as session:
        assert not session.get(Job, alice.job).cancel_requested
        assert set(session.scalars(select(Job.owner))) == {"alice", "bob"}  # strangers stored nothing
    assert a_bearer.post(f"/v1/jobs/{alice.job}/cancel").status_code == 200


def test_the_route_inventory_sees_every_kind_of_route(served):
    """The inventory the walk is checked against finds routes of the app itself, of included
    routers (with their prefix) and mounts: a flattening that missed one would let a route
    go unwalked."""
    routes = app_routes(the_app(served))
    assert {"GET /healthz", "POST /v1/jobs", "GET /v1/jobs/{job_id}/trials/{number}", "GET /ui/",
            "MOUNT /ui/static", "POST /ui/session"} <= routes


def test_a_token_gets_in_only_where_it_belongs(served):
    """A token in the query string is no token; a revoked stored token is a 401; a state change
    signed in by the dashboard's cookie without its header (what a cross-site form sends) is a
    403 and stores nothing."""
    from metatune_service.models import ApiToken

    anonymous = served.client(owner=None)
    for params in ({"token": "token-alice"}, {"access_token": "token-alice"}, {"api_key": "token-alice"}):
        assert anonymous.get("/v1/jobs", params=params).status_code == 401
    stored = crud.create_token(served.db, owner="carol")
    carol = served.client(owner=None, headers={"Authorization": f"Bearer {stored}"})
    assert carol.get("/v1/jobs").status_code == 200
    with served.db.write() as session:
        session.execute(ApiToken.__table__.update().values(revoked=True))
    assert carol.get("/v1/jobs").status_code == 401
    assert anonymous.post("/ui/session", json={"token": stored}).status_code == 401
    cookie = served.client(owner=None, headers={"Cookie": f"{SESSION_COOKIE}=token-alice"})
    assert cookie.get("/v1/jobs").status_code == 200
    for path, body in (("/v1/jobs", JOB), ("/v1/comparisons", COMPARISON)):
        assert cookie.post(path, json=body).status_code == 403
    with served.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


# -- no code, pickle or import path -----------------------------------------------------------------


def code_payloads(sentinel: Path) -> list[str]:
    """Strings that would run something (and create ``sentinel``) if anything evaluated,
    imported or unpickled them."""
    command = f"touch {sentinel}"

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return os.system, (command,)

    return ["os:system", "__import__('os').system('true')", f"__import__('os').system({command!r})",
            "builtins.eval", "metatune.objectives.quadratic", "subprocess.Popen", f"os:system:{command}",
            f"!!python/object/apply:os.system [{command!r}]", "{{ cycler.__init__.__globals__.os.popen('id') }}",
            base64.b64encode(pickle.dumps(Boom())).decode()]


def code_bodies(payload: str) -> list[tuple[str, dict]]:
    """Each place of a job or comparison body that names something, holding ``payload``."""
    job = [
        {**JOB, "objective": payload},
        {**JOB, "method": payload},
        {**JOB, "objective_params": {"dtype": payload}},
        {**JOB, "objective_params": {"spectrum": payload}},
        {**JOB, "objective_params": {payload: 1}},
        {**JOB, "method": "metagrad", "options": {"mode": payload}},
        {**JOB, "method": "metagrad", "options": {"outer": payload}},
        {**JOB, "method": "metagrad", "options": {"guard": payload}},
        {**JOB, "method": "metagrad", "options": {payload: 1}},
        {**JOB, "options": {payload: payload}},
        {**JOB, "space": {"groups": payload}},
        {**JOB, "space": {"groups": [payload]}},
        {**JOB, "space": {"schedule": {"shape": payload}}},
        {**JOB, payload: 1},
    ]
    comparison = [
        {**COMPARISON, "objective": payload},
        {**COMPARISON, "methods": [payload]},
        {**COMPARISON, "objective_params": {"dtype": payload}},
        {**COMPARISON, "options": {payload: {}}},
        {**COMPARISON, "methods": ["metagrad"], "options": {"metagrad": {"mode": payload}}},
        {**COMPARISON, "space": {"groups": payload}},
    ]
    return [("/v1/jobs", b) for b in job] + [("/v1/comparisons", b) for b in comparison]


def test_no_code_pickle_or_import_path_is_accepted_anywhere(served, tmp_path):
    """Names, options and objective parameters holding code, import paths or a pickle are
    refused with 422 (404 where a path names something); bodies in other encodings (a raw
    pickle) are refused; nothing is stored and nothing ran (the sentinel file each payload
    would create does not exist)."""
    sentinel = tmp_path / "ran"
    client = served.client()
    alice = client.post("/v1/jobs", json=JOB).json()["id"]
    failures = []
    for payload in code_payloads(sentinel):
        for path, body in code_bodies(payload):
            response = client.post(path, json=body)
            if response.status_code != 422:
                failures.append(f"POST {path} {json.dumps(body)[:120]}: {response.status_code}")
        for url in (f"/v1/jobs/{quote(payload, safe='')}", f"/v1/comparisons/{quote(payload, safe='')}",
                    f"/v1/jobs/{alice}/trials/{quote(payload, safe='')}",
                    f"/v1/comparisons/x/plots/{quote(payload, safe='')}.png",
                    f"/ui/data/jobs/{quote(payload, safe='')}"):
            response = client.get(url, headers={"Cookie": f"{SESSION_COOKIE}=token-alice"})
            if response.status_code not in (404, 422):
                failures.append(f"GET {url}: {response.status_code}")
        listed = client.get("/v1/jobs", params={"objective": payload})
        if listed.status_code not in (200, 422) or (listed.status_code == 200 and listed.json()["items"]):
            failures.append(f"GET /v1/jobs?objective={payload!r}: {listed.status_code} {listed.text[:100]}")
    command = f"touch {sentinel}"

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            return os.system, (command,)

    for content_type in ("application/python-pickle", "application/octet-stream", "application/json"):
        response = client.post("/v1/jobs", content=pickle.dumps(Boom()), headers={"Content-Type": content_type})
        if not 400 <= response.status_code < 500:
            failures.append(f"a pickled body as {content_type}: {response.status_code}")
    response = client.post("/v1/jobs", content=f"!!python/object/apply:os.system [{command!r}]",
                           headers={"Content-Type": "application/x-yaml"})
    if not 400 <= response.status_code < 500:
        failures.append(f"a YAML body: {response.status_code}")
    assert not failures, "\n".join(failures)
    time.sleep(0.5)
    assert not sentinel.exists()
    with served.db.read() as session:
        assert session.scalars(select(Job.id)).all() == [alice]


# -- tokens ----------------------------------------------------------------------------------------------


def all_values(served) -> Iterator[tuple[str, str, str]]:
    """(table, column, value as text) of every cell of every table of the service's database."""
    with served.db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            result = connection.execute(text(f'SELECT * FROM "{table}"'))
            for row in result:
                for column, value in zip(result.keys(), row):
                    yield table, column, value.hex() if isinstance(value, bytes) else str(value)


def test_tokens_are_stored_hashed_and_never_reach_the_database_in_plain_text(served):
    """A stored token's row holds a digest, not the token (nor its base64 or hex); after
    requests with every kind of token, no token appears in any cell of any table, and no SQL
    statement the service sends carries one (a stored token is looked up by its hash)."""
    token = crud.create_token(served.db, owner="carol")
    encodings = {token, base64.b64encode(token.encode()).decode(), token.encode().hex()}
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001, ARG001
        statements.append(f"{statement} {parameters!r}")

    event.listen(Engine, "before_cursor_execute", record)
    try:
        carol = served.client(owner=None, headers={"Authorization": f"Bearer {token}"})
        assert carol.post("/v1/jobs", json=JOB).json()["owner"] == "carol"
        assert carol.get("/v1/jobs").json()["total"] == 1
        assert served.client("alice").get("/v1/jobs").status_code == 200
        wrong = "wrong-" + secrets.token_hex(12)
        assert served.client(owner=None, headers={"Authorization": f"Bearer {wrong}"}).get("/v1/jobs").status_code == 401
        assert served.client(owner=None).post("/ui/session", json={"token": token}).status_code == 204
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    tokens = {token, wrong, "token-alice", "token-bob"}
    assert any(crud.hash_token(token) in s for s in statements)  # looked up by its hash
    assert not [s for s in statements if any(t in s for t in tokens)]
    with served.db.read() as session:
        from metatune_service.models import ApiToken

        (row,) = session.scalars(select(ApiToken)).all()
    assert row.owner == "carol" and row.token_hash != token and len(row.token_hash) >= 32
    cells = list(all_values(served))
    assert len(cells) > 20
    assert not [(t, c) for t, c, v in cells if any(e in v for e in encodings | tokens)]


def test_tokens_are_compared_in_constant_time(served, monkeypatch):
    """A configured token is compared with ``hmac.compare_digest`` against every known token (no
    dict lookup or ``==`` that returns at the first differing byte, and no early exit that
    tells how many tokens come before a match); a stored token is found by its hash, so the
    database never compares the token itself."""
    import metatune_service.api.deps as deps

    seen: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a, b):  # noqa: ANN001, ANN202
        seen.append((bytes(a), bytes(b)))
        return compare(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    wrong = "token-alicf"
    assert served.client(owner=None, headers={"Authorization": f"Bearer {wrong}"}).get("/v1/jobs").status_code == 401
    assert sorted(known for known, given in seen if given == wrong.encode()) == [b"token-alice", b"token-bob"]
    seen.clear()
    assert served.client("alice").get("/v1/jobs").status_code == 200
    assert sorted(known for known, given in seen if given == b"token-alice") == [b"token-alice", b"token-bob"]


def serve(workdir: Path, ray_dir: Path, tokens: str) -> tuple[subprocess.Popen, str]:
    """``metatune serve`` (with its embedded worker) on a free port; its stdout and stderr go to
    files in ``workdir``."""
    port = free_port()
    env = {**os.environ, "METATUNE_DATABASE_URL": f"sqlite:///{workdir / 'serve.db'}", "METATUNE_API_TOKENS": tokens,
           "METATUNE_OUTPUT_DIR": str(workdir / "out"), "METATUNE_RAY_DIR": str(ray_dir), "OMP_NUM_THREADS": "1",
           "METATUNE_POLL_SECONDS": "0.1", "RAY_AUTH_MODE": "disabled"}
    with (workdir / "stdout").open("wb") as stdout, (workdir / "stderr").open("wb") as stderr:
        server = subprocess.Popen([sys.executable, "-m", "metatune.cli", "serve", "--port", str(port)], env=env,
                                  stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"metatune serve did not start: {(workdir / 'stderr').read_text()[-2000:]}")


def test_no_token_is_ever_logged_by_a_full_run_of_metatune_serve(tmp_path):
    """A real ``metatune serve`` with configured tokens (``owner:token`` and bare) and one made by
    ``metatune token create`` runs a job to its end; every token signs in, submits, reads,
    fails validation and asks for what does not exist, and wrong tokens are refused. Neither
    the server's stdout and stderr nor any file it or its Ray wrote holds any token."""
    named, bare = "n" + secrets.token_hex(16), "b" + secrets.token_hex(16)
    wrong = ["w" + secrets.token_hex(16), "token-" + secrets.token_hex(16)]
    ray_dir = Path(tempfile.mkdtemp(prefix="mtr", dir="/tmp"))  # short: Ray's socket paths are bounded
    env = {**os.environ, "METATUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    upgraded = subprocess.run([sys.executable, "-m", "metatune.cli", "db", "upgrade"], env=env, capture_output=True,
                              text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    created = subprocess.run([sys.executable, "-m", "metatune.cli", "token", "create", "--owner", "carol"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    stored = created.stdout.strip()
    assert len(stored) >= 32 and stored not in created.stderr
    server, url = serve(tmp_path, ray_dir, f"alice:{named},{bare}")
    try:
        for token in (named, bare, stored):
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            with client:
                job = client.post("/v1/jobs", json=JOB)
                assert job.status_code == 202 and token not in job.text
                assert client.get("/v1/jobs").status_code == 200
                assert client.post("/v1/jobs", json={**JOB, "seed": -1}).status_code == 422
                assert client.get("/v1/jobs/" + secrets.token_hex(16)).status_code == 404
                assert client.get("/v1/jobs", params={"status": "sideways"}).status_code == 422
                signed_in = httpx.post(f"{url}/ui/session", json={"token": token})
                assert signed_in.status_code == 204
                page = httpx.get(f"{url}/ui/jobs/{job.json()['id']}",
                                 headers={"Cookie": f"{SESSION_COOKIE}={token}"})
                assert page.status_code == 200 and token not in page.text
        for token in wrong:
            assert httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 401
            assert httpx.post(f"{url}/ui/session", json={"token": token}).status_code == 401
            assert httpx.get(f"{url}/ui", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code in (200, 303)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {named}"}, timeout=60) as client:
            deadline = time.monotonic() + 240
            while client.get("/v1/jobs", params={"status": "succeeded"}).json()["total"] < 1:
                assert time.monotonic() < deadline, "no job ended within 240 s"
                time.sleep(0.5)
        running = written(tmp_path, ray_dir)  # Ray's session logs, while they exist (Ray removes them at its end)
        assert any("ray" in str(p) for p in running) and len(running) > 10
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    try:
        ended = written(tmp_path, ray_dir)
        assert {"stdout", "stderr"} <= {p.name for p in ended}
        found = [(str(path), t[:6]) for path, content in {**running, **ended}.items()
                 for t in (named, bare, stored, *wrong) if t.encode() in content]
        assert not found, f"tokens written to {found}"
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def written(*roots: Path) -> dict[Path, bytes]:
    """The content of every regular file under ``roots``."""
    files = {}
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    files[path] = path.read_bytes()
            except OSError:  # a socket, or a file removed meanwhile
                pass
    return files


# -- SQL metacharacters --------------------------------------------------------------------------------

METACHARACTERS = ["'; DROP TABLE jobs; --", '" OR 1=1 --', "' OR '1'='1", "%", "_", "\\", "%%", "quad%", "_uadratic",
                  "quadrati_", "\\%", "a\x00b"]
"""What would change a statement built by string formatting, or match as a LIKE pattern."""


def string_fields(value: str) -> list[tuple[str, dict]]:
    """``value`` in each string field of a job and a comparison body (keys of free maps
    included)."""
    return [("/v1/jobs", b) for b in (
        {**JOB, "objective": value}, {**JOB, "method": value}, {**JOB, "objective_params": {"spectrum": value}},
        {**JOB, "objective_params": {"dtype": value}}, {**JOB, "objective_params": {value: 1}},
        {**JOB, "options": {value: 1}}, {**JOB, "method": "metagrad", "options": {"mode": value}},
        {**JOB, "space": {"groups": value}}, {**JOB, "space": {"groups": ["x", value]}},
        {**JOB, "space": {"schedule": {"shape": value}}},
    )] + [("/v1/comparisons", b) for b in (
        {**COMPARISON, "objective": value}, {**COMPARISON, "methods": [value]},
        {**COMPARISON, "objective_params": {"spectrum": value}}, {**COMPARISON, "options": {value: {}}},
        {**COMPARISON, "space": {"groups": value}},
    )]


def row_counts(served) -> dict[str, int]:
    with served.db.engine.connect() as connection:
        names = inspect(connection).get_table_names()
        return {t: connection.execute(text(f'SELECT count(*) FROM "{t}"')).scalar() for t in names}


def string_parameters(document: dict) -> list[tuple[str, str, str]]:
    """(method, path, name) of every string query and path parameter in the OpenAPI document."""
    def is_string(schema: dict) -> bool:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return schema.get("type") == "string" or any(is_string(s) for s in schema.get("anyOf", ()))

    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                if parameter["in"] in ("query", "path") and is_string(parameter["schema"]):
                    found.append((method.upper(), path, parameter["name"]))
    return found


def test_sql_metacharacters_are_data_in_every_string_field_and_filter(served):
    """Each metacharacter in every string field of a job and a comparison body, in every string
    query and path parameter of the API: never a 500, nothing dropped or changed (tables and
    row counts as before, but for the comparisons accepted with such a name: stored and read
    back verbatim), filters match literally (``%`` and ``_`` are no wildcards); a NUL is a 422
    in a body or a filter, and a 404 (or 400 for a cursor) in an id, which it cannot be."""
    client = served.client()
    alice = Alice(served)
    document = client.get("/openapi.json").json()
    parameters = string_parameters(document)
    assert {("GET", "/v1/jobs", "objective"), ("GET", "/v1/jobs", "cursor"), ("GET", "/v1/jobs/{job_id}", "job_id"),
            ("GET", "/v1/jobs", "status"), ("GET", "/v1/jobs", "method")} <= set(parameters)
    tables, before = inspect(served.db.engine).get_table_names(), row_counts(served)
    failures, accepted = [], 0
    for value in METACHARACTERS:
        for path, body in string_fields(value):
            response = client.post(path, json=body)
            if response.status_code != 422:
                failures.append(f"POST {path} {json.dumps(body)[:100]}: {response.status_code} {response.text[:150]}")
        named = client.post("/v1/comparisons", json={**COMPARISON, "name": value})
        if "\x00" in value:
            if named.status_code != 422:
                failures.append(f"a comparison named {value!r}: {named.status_code} {named.text[:150]}")
        elif named.status_code != 202:
            failures.append(f"a comparison named {value!r}: {named.status_code} {named.text[:150]}")
        else:
            accepted += 1
            read = client.get(f"/v1/comparisons/{named.json()['id']}").json()
            if read["name"] != value:
                failures.append(f"a comparison named {value!r} reads back as {read['name']!r}")
        for method, path, name in parameters:
            url = fill(path.replace("{" + name + "}", quote(value, safe="")), alice)
            params = {} if "{" + name + "}" in path else {name: value}
            status, _, body = call(client, method, url, params=params)
            if status >= 500 or status in (200, 202) and (name != "objective" or "\x00" in value):
                failures.append(f"{method} {path} {name}={value!r}: {status} {body[:150]}")
            if status == 200 and name == "objective" and json.loads(body)["items"]:
                failures.append(f"{method} {path} objective={value!r} matched {json.loads(body)['total']} jobs")
    assert not failures, "\n".join(failures)
    assert inspect(served.db.engine).get_table_names() == tables
    after = row_counts(served)
    assert after.pop("comparisons") == before.pop("comparisons") + accepted
    assert after.pop("jobs") == before.pop("jobs") + accepted  # one method, one seed each
    assert after == before
    assert client.get("/v1/jobs", params={"objective": "quadratic"}).json()["total"] == 2 + accepted
