"""Engines and sessions. SQLite: WAL, a busy timeout, foreign keys on, and writes serialised
through one lock per engine (SQLite has one writer at a time; waiting on our lock is cheaper
and fairer than its busy loop). PostgreSQL through psycopg 3.

Reads run on their own pool of connections opened in autocommit (each statement its own
snapshot: no BEGIN and ROLLBACK round trips around a request's one or two SELECTs, and no
isolation level set and reset at each checkout, which on SQLite is a PRAGMA each way and
cost as much as the read); writes in one transaction each, on the other pool. A pooled connection is
pinged before use only when it has been idle for :data:`PING_AFTER_IDLE_SECONDS` (one that
fails is replaced): under load connections are reused within milliseconds, and a ping on
every checkout would double a read's round trips, while one left idle through a database
restart is still caught before a request gets it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

PING_AFTER_IDLE_SECONDS = 1.0
"""How long a pooled connection may have been idle before it is pinged at checkout."""
POOL_SIZE = 4
"""Connections per pool (a process has two: reads and writes), and so threads of one process in the database at once; the others
wait for one in the pool (asleep, not holding the GIL). Under 200 requests/s on 2 cores, 4
gave p50 7 ms where 20 (+ 40 overflow, opened and closed again under load) gave 150 ms: past
a few, threads only contend for the GIL and the cores, and SQLite's single writer."""
POOL_TIMEOUT_SECONDS = 30.0
"""Longest a request waits for a connection before :class:`sqlalchemy.exc.TimeoutError`."""


def normalise_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) → the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """An engine for ``url`` (``autocommit``: every connection opened in autocommit); SQLite
    gets WAL, busy timeout and foreign keys on every connection."""
    url = normalise_url(url)
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=POOL_SIZE,
                               max_overflow=0, pool_timeout=POOL_TIMEOUT_SECONDS, **isolation)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # noqa: ANN001
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT_SECONDS, **isolation)
    ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


def ping_when_idle(engine: Engine, seconds: float) -> None:
    """Ping a pooled connection at checkout if it was checked in more than ``seconds`` ago; a
    failed ping makes the pool discard it and check out another (SQLAlchemy's
    :class:`~sqlalchemy.exc.DisconnectionError` protocol)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since <= seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError(f"a pooled connection failed its ping: {error}") from error


class Database:
    """Two engines (writes, and reads in autocommit), their session factories and the write
    path (one lock on SQLite)."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine = make_engine(self.url, autocommit=True)
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self.is_sqlite = self.url.startswith("sqlite")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._reading = threading.local()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading, in autocommit: each statement sees the data committed when
        it runs (nothing written through it is kept). Reads nested in a thread's open read
        share its session, so a request that wraps its reads in one ``read()`` checks out one
        pooled connection, not one per query."""
        session = getattr(self._reading, "session", None)
        if session is not None:
            yield session
            return
        with self.read_sessions() as session:
            self._reading.session = session
            try:
                yield session
            finally:
                self._reading.session = None

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.sessions() as session, session.begin():
                yield session
        finally:
            if lock is not None:
                lock.release()

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()
