"""Service fixtures: a fresh database per test (SQLite file, and PostgreSQL where it answers),
the app served by a real uvicorn on a free port, and an HTTP client per owner."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from metatune_service.core.config import Settings  # noqa: E402
from metatune_service.core.db import Database  # noqa: E402
from metatune_service.core.migrations import upgrade  # noqa: E402
from metatune_service.main import create_app  # noqa: E402
from metatune_service.models import utcnow  # noqa: E402
from metatune_service.worker import Worker  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
TOKENS = "alice:token-alice,bob:token-bob"


def postgres_available() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it answers."""
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=2):
            return None
    except Exception as error:  # noqa: BLE001 - any failure means: skip with its reason
        return f"PostgreSQL at 127.0.0.1:5432 does not answer: {error}"


def make_postgres_database() -> str:
    import psycopg

    name = f"metatune_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database of each kind (PostgreSQL skipped with its reason where absent)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metatune.db'}"
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = make_postgres_database()
    yield POSTGRES.format(name=name)
    drop_postgres_database(name)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'metatune.db'}"


class FakeClock:
    """A clock for leases that moves only when told (``advance``), from the real time; it
    counts its reads, so that a test knows when a thread has looked at it."""

    def __init__(self) -> None:
        self.now, self.reads = utcnow(), 0

    def __call__(self) -> datetime:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """The app on a real uvicorn server in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.port = settings, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.db = Database(settings.database_url)
        self.clients: list[httpx.Client] = []

    def client(self, owner: str | None = "alice", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer token-{owner}"} if owner else {}
        client = httpx.Client(base_url=self.url, headers={**headers, **kwargs.pop("headers", {})}, timeout=60, **kwargs)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.db.dispose()


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, api_tokens=TOKENS, output_dir=tmp_path / "out", lease_seconds=3,
                    heartbeat_seconds=0.5, poll_seconds=0.1, max_gradient_evals=1e6)


@pytest.fixture
def served(settings):
    app = Served(settings)
    yield app
    app.stop()


@pytest.fixture
def migrated(database_url) -> Database:
    upgrade(database_url)
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def worker(served, ray_cluster):
    """A worker thread running the served database's jobs on the session's Ray."""
    stop = threading.Event()
    thread = threading.Thread(target=Worker(served.db, served.settings).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
