"""The service's contract as a client meets it: one error body shape with a code, every status
a route answers declared in its OpenAPI document, UTC timestamps with their offset, limits on
rate, size and depth, /docs without a CDN, the event stream's metrics and keep-alive, and 503
(not 500) while the database is unreachable, read-only or full."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import event

from metatune_service.api.errors import CODES
from metatune_service.api.limits import TokenBuckets, json_depth
from metatune_service.core.config import Settings
from metatune_service.models import Job, Trial, TrialMetric, utcnow

from .conftest import TOKENS, Served

QUAD = {"objective": "quadratic", "objective_params": {"dim": 4}, "method": "random",
        "budget": {"inner_steps": 20, "trials": 3}}


def offset_of(text: str) -> timedelta | None:
    """The UTC offset an RFC 3339 timestamp states (None when it states none)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).utcoffset()


# --- one error shape ---------------------------------------------------------------------------

def test_every_error_has_a_detail_and_the_code_of_its_kind(served):
    alice, anonymous = served.client(), served.client(owner=None)
    cases = {
        401: anonymous.get("/v1/jobs"),
        404: alice.get("/v1/jobs/" + "0" * 32),
        422: alice.post("/v1/jobs", json={"objective": "quadratic"}),
        413: alice.post("/v1/jobs", content=b"{" + b" " * served.settings.max_body_bytes + b"}",
                        headers={"Content-Type": "application/json"}),
        405: alice.delete("/v1/jobs"),
        400: alice.get("/v1/jobs", params={"cursor": "x"}),
    }
    for status, response in cases.items():
        body = response.json()
        assert response.status_code == status, (status, body)
        assert set(body) == {"detail", "code"} and body["code"] == CODES[status] and body["detail"], body
    spec_error = alice.post("/v1/jobs", json={**QUAD, "objective": "nope"})
    assert spec_error.status_code == 422 and spec_error.json()["code"] == "invalid_spec"
    assert "not registered" in spec_error.json()["detail"]
    assert anonymous.get("/v1/jobs").headers["www-authenticate"] == "Bearer"


def test_the_openapi_document_declares_every_status_of_every_route(served):
    """Each operation lists what it can answer (auth, rate, outage; body limits on writes), each
    as the Problem schema; a malformed id or filter is refused by the declared bounds."""
    paths = served.client(owner=None).get("/openapi.json").json()["paths"]
    common = {"401", "429", "503"}
    expected = {("post", "/v1/jobs"): common | {"202", "403", "409", "411", "413", "422"},
                ("get", "/v1/jobs"): common | {"200", "400", "422"},
                ("get", "/v1/jobs/{job_id}"): common | {"200", "404", "422"},
                ("post", "/v1/jobs/{job_id}/cancel"): common | {"200", "403", "404", "411", "413", "422"},
                ("get", "/v1/jobs/{job_id}/trials"): common | {"200", "404", "422"},
                ("get", "/v1/jobs/{job_id}/trials/{number}"): common | {"200", "404", "422"},
                ("get", "/v1/jobs/{job_id}/events"): common | {"200", "404", "422"},
                ("post", "/v1/comparisons"): common | {"202", "403", "409", "411", "413", "422"},
                ("get", "/v1/comparisons/{comparison_id}"): common | {"200", "404", "422"},
                ("get", "/v1/comparisons/{comparison_id}/plots/{name}.png"): common | {"200", "404", "409", "422"},
                ("get", "/v1/objectives"): common | {"200"},
                ("get", "/healthz"): {"200", "429"}}
    found = {(method, path): set(operation["responses"]) for path, item in paths.items()
             for method, operation in item.items()}
    assert found == expected
    for (method, path), statuses in found.items():
        for status in statuses - {"200", "202"}:
            schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
    retry = paths["/v1/jobs"]["get"]["responses"]["503"]["headers"]
    assert "Retry-After" in retry
    links = paths["/v1/jobs"]["post"]["responses"]["202"]["links"]
    operation_ids = {op["operationId"] for item in paths.values() for op in item.values()}
    assert {link["operationId"] for link in links.values()} <= operation_ids and "readTrial" in links


def test_the_document_names_the_objectives_a_submission_can_use(served):
    """``objective`` of a job and of a comparison is an enum of this server's registry, the
    names ``/v1/objectives`` lists; a name outside it is refused with the names to use."""
    client = served.client()
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    listed = sorted(o["name"] for o in client.get("/v1/objectives").json())
    assert len(listed) > 1
    for body in ("JobCreate", "ComparisonCreate"):
        assert schemas[body]["properties"]["objective"]["enum"] == listed, body
    refused = client.post("/v1/jobs", json={"objective": "not-" + listed[0], "method": "random"})
    assert refused.status_code == 422 and listed[0] in refused.json()["detail"]


# --- UTC timestamps ---------------------------------------------------------------------------

def test_timestamps_carry_a_utc_offset_on_every_database(served):
    """PostgreSQL keeps the offset; SQLite keeps none and loses it unless the column restores it."""
    alice = served.client()
    job = alice.post("/v1/jobs", json=QUAD).json()
    stored = alice.get(f"/v1/jobs/{job['id']}").json()
    for text in (job["created_at"], stored["created_at"]):
        assert offset_of(text) == timedelta(0), text
    assert abs(datetime.fromisoformat(stored["created_at"]) - utcnow()) < timedelta(minutes=1)
    listed = alice.get("/v1/jobs").json()["items"][0]
    assert offset_of(listed["created_at"]) == timedelta(0)
    with served.db.read() as session:
        row = session.get(Job, job["id"])
    assert row.created_at.utcoffset() == timedelta(0)


def test_a_time_in_another_zone_is_stored_as_the_same_instant_and_a_naive_one_is_refused(served):
    job = served.client().post("/v1/jobs", json=QUAD).json()
    elsewhere = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    with served.db.write() as session:
        session.get(Job, job["id"]).started_at = elsewhere
    with served.db.read() as session:
        back = session.get(Job, job["id"]).started_at
    assert back == elsewhere and back.utcoffset() == timedelta(0) and back.hour == 21
    with pytest.raises(Exception, match="no timezone"):
        with served.db.write() as session:
            session.get(Job, job["id"]).started_at = datetime(2026, 1, 2)


# --- limits -------------------------------------------------------------------------------------

def test_json_depth_counts_brackets_outside_strings():
    assert json_depth(b"{}") == 1 and json_depth(b"1") == 0
    assert json_depth(b'[[["[[[[", {"a": "\\"]]"}]]]') == 4
    assert json_depth(b"[" * 50 + b"]" * 50) == 50


def test_a_deep_body_a_bad_encoding_and_bad_text_get_422_and_store_nothing(served):
    alice = served.client()
    deep = alice.post("/v1/jobs", content=b'{"objective_params": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                      headers={"Content-Type": "application/json"})
    assert deep.status_code == 422 and deep.json()["code"] == "too_deep" and "5001" in deep.json()["detail"]
    latin1 = alice.post("/v1/jobs", content='{"objective": "qu\xe4dratic"}'.encode("latin-1"),
                        headers={"Content-Type": "application/json"})
    assert latin1.status_code == 422 and latin1.json()["code"] == "invalid_body"
    for bad in ("\\ud800", "\\u0000", "a\\udfffb"):
        for body in (f'{{"objective": "{bad}", "method": "random"}}',
                     f'{{"objective": "quadratic", "method": "random", "objective_params": {{"{bad}": 1}}}}',
                     f'{{"name": "{bad}", "objective": "quadratic", "methods": ["random"]}}'):
            path = "/v1/comparisons" if "methods" in body else "/v1/jobs"
            response = alice.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (body, response.text)
            assert "NUL characters or lone surrogates" in json.dumps(response.json())
    for path in ("/v1/jobs/%00", "/v1/jobs/a%00b/trials", "/v1/comparisons/%00"):
        assert alice.get(path).status_code == 404
    assert alice.get("/v1/jobs", params={"objective": "a\x00b"}).status_code == 422
    assert alice.get("/v1/jobs").json()["total"] == 0


def test_token_buckets_allow_the_burst_then_the_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(b"a") == pytest.approx(0.5)  # one token at 2/s
    assert buckets.take(b"b") == 0.0  # per key
    now[0] += 0.5
    assert buckets.take(b"a") == 0.0 and buckets.take(b"a") == pytest.approx(0.5)
    now[0] += 100
    assert [buckets.take(b"a") for _ in range(4)][-1] > 0  # refilled to the burst, no further
    assert TokenBuckets(rate=0, burst=1).take(b"a") == 0.0


def test_a_token_past_its_rate_gets_429_with_retry_after_and_others_do_not(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_tokens=TOKENS, rate_limit=0.5,
                        rate_burst=3, output_dir=tmp_path / "out")
    served = Served(settings)
    try:
        alice, bob = served.client(), served.client("bob")
        statuses = [alice.get("/v1/jobs").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = alice.get("/v1/jobs")
        assert refused.json()["code"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 2
        assert bob.get("/v1/jobs").status_code == 200
    finally:
        served.stop()


# --- /docs and the event stream ---------------------------------------------------------------------

def test_docs_load_every_asset_from_the_service(served):
    anonymous = served.client(owner=None)
    page = anonymous.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and not [a for a in assets if "//" in a]  # no http(s)://, no protocol-relative URL
    for asset in assets:
        assert anonymous.get(asset).status_code == 200, asset


def test_trials_total_is_the_jobs_count_not_the_pages(served):
    alice = served.client()
    job = alice.post("/v1/jobs", json=QUAD).json()
    with served.db.write() as session:
        for number in range(7):
            session.add(Trial(job_id=job["id"], number=number, point={"lr": 0.1, "momentum": 0.5}, lr=0.1,
                              momentum=0.5, status="completed", value=1.0 / (number + 1), gradient_evals=21,
                              cumulative_evals=21 * (number + 1), wall_seconds=0.1))
    page = alice.get(f"/v1/jobs/{job['id']}/trials", params={"limit": 3, "after": 1}).json()
    assert [t["number"] for t in page["items"]] == [2, 3, 4] and page["total"] == 7


def read_events(url: str, headers: dict, seconds: float) -> list[str]:
    """The raw lines of an event stream read for ``seconds``."""
    async def run() -> list[str]:
        lines: list[str] = []
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                try:
                    async with asyncio.timeout(seconds):
                        async for line in response.aiter_lines():
                            lines.append(line)
                except TimeoutError:
                    pass
        return lines
    return asyncio.run(run())


def test_events_carry_trial_metrics_and_keep_alive_comments(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", api_tokens=TOKENS,
                        keepalive_seconds=0.3, output_dir=tmp_path / "out")
    served = Served(settings)
    try:
        job = served.client().post("/v1/jobs", json=QUAD).json()
        with served.db.write() as session:
            trial = Trial(job_id=job["id"], number=0, point={"lr": 0.1, "momentum": 0.5}, lr=0.1, momentum=0.5,
                          status="completed", value=0.25, gradient_evals=21, cumulative_evals=21, wall_seconds=0.1)
            session.add(trial)
        with served.db.write() as session:
            session.add(TrialMetric(trial_id=trial.id, step=20, name="val_loss", value=0.25))
        lines = read_events(f"{served.url}/v1/jobs/{job['id']}/events?interval=0.05",
                            {"Authorization": "Bearer token-alice"}, seconds=1.5)
    finally:
        served.stop()
    data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    trials = [d for d in data if "number" in d]
    assert len(trials) == 1 and trials[0]["metrics"] and all(v == 0.25 for v in trials[0]["metrics"].values())
    assert lines.count(": keep-alive") >= 2  # a queued job sends nothing else after its status


# --- the database unavailable -------------------------------------------------------------------

class Gate:
    """A TCP proxy to PostgreSQL that a test closes (connections cut, new ones refused) and
    opens again: a database restart as the service sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.open, self.sockets = target, True, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        source.close()  # each socket is the source of one pipe: closed once, when its pipe ends

    def close(self) -> None:
        self.open = False
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets = []


def test_a_postgres_outage_gets_503_with_retry_after_and_the_service_recovers(tmp_path):
    from .conftest import drop_postgres_database, make_postgres_database, postgres_available

    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = make_postgres_database()
    gate = Gate(("127.0.0.1", 5432))
    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{gate.port}/{name}",
                        api_tokens=TOKENS, output_dir=tmp_path / "out")
    served = Served(settings)
    try:
        alice = served.client()
        first = alice.post("/v1/jobs", json=QUAD).json()["id"]
        gate.close()
        down = [alice.get("/v1/jobs"), alice.post("/v1/jobs", json=QUAD), alice.get(f"/v1/jobs/{first}")]
        for response in down:
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "unavailable" and int(response.headers["retry-after"]) > 0
        gate.open = True
        back = alice.get("/v1/jobs")
        assert back.status_code == 200 and [j["id"] for j in back.json()["items"]] == [first]
        assert alice.post("/v1/jobs", json=QUAD).status_code == 202
    finally:
        served.stop()
        gate.close()
        gate.listener.close()
        drop_postgres_database(name)


def test_a_read_only_or_full_sqlite_database_gets_503_and_keeps_what_it_had(tmp_path):
    """Read-only: the file opened with ``mode=ro``. Full: SQLite's own SQLITE_FULL, reached by
    capping the file's pages (what a full disk returns, without mounting a file system)."""
    path = tmp_path / "db.sqlite"
    settings = Settings(database_url=f"sqlite:///{path}", api_tokens=TOKENS, output_dir=tmp_path / "out")
    served = Served(settings)
    try:
        first = served.client().post("/v1/jobs", json=QUAD).json()["id"]
    finally:
        served.stop()
    read_only = Served(Settings(database_url=f"sqlite:///file:{path}?mode=ro&uri=true", api_tokens=TOKENS,
                                output_dir=tmp_path / "out"))
    try:
        alice = read_only.client()
        refused = alice.post("/v1/jobs", json=QUAD)
        assert refused.status_code == 503 and "read-only" in refused.json()["detail"]
        assert [j["id"] for j in alice.get("/v1/jobs").json()["items"]] == [first]
    finally:
        read_only.stop()
    served = Served(settings)
    try:
        alice = served.client()
        pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
        engine = served.server.config.app.state.db.engine
        event.listen(engine, "connect", lambda connection, _: connection.execute(f"PRAGMA max_page_count = {pages}"))
        engine.dispose()  # every connection from here on has the cap
        capped = [alice.post("/v1/jobs", json={**QUAD, "seed": seed}) for seed in range(200)]
        full = [r for r in capped if r.status_code == 503]
        assert full and all("disk full" in r.json()["detail"] for r in full)
        assert {r.status_code for r in capped} <= {202, 503}
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        served.stop()
    recovered = Served(settings)
    try:
        assert recovered.client().post("/v1/jobs", json=QUAD).status_code == 202
    finally:
        recovered.stop()
