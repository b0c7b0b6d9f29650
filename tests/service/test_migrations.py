"""Alembic: upgrade → downgrade → upgrade, models and migrations agree, outdated databases refused."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.core.db import Database
from service.core.migrations import (VERSION_TABLE, OutdatedDatabase, current_revision, downgrade, head_revision,
                                     prepare, upgrade)
from service.models import Base

TABLES = {"jobs", "trials", "trial_metrics", "metagrad_steps", "comparisons", "api_tokens"}


def test_upgrade_downgrade_upgrade_round_trip(database_url):
    db = Database(database_url)
    try:
        upgrade(database_url)
        assert TABLES <= set(inspect(db.engine).get_table_names())
        assert current_revision(db.engine) == head_revision()
        assert "alembic_version" not in inspect(db.engine).get_table_names()  # its own version table
        downgrade(database_url)
        assert not TABLES & set(inspect(db.engine).get_table_names())
        upgrade(database_url)
        assert TABLES <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()


def test_models_and_migrations_agree(database_url):
    upgrade(database_url)
    db = Database(database_url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, "compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()


def test_foreign_keys_cascade_and_indexes_cover_the_filters(database_url):
    upgrade(database_url)
    db = Database(database_url)
    try:
        inspector = inspect(db.engine)
        for table in ("trials", "metagrad_steps"):
            (fk,) = inspector.get_foreign_keys(table)
            assert fk["referred_table"] == "jobs" and fk["options"].get("ondelete") == "CASCADE"
        indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("jobs")}
        assert {("owner",), ("status",), ("method",), ("objective",), ("created_at",)} <= indexed
        assert ("trial_id", "step") in {tuple(ix["column_names"]) for ix in inspector.get_indexes("trial_metrics")}
    finally:
        db.dispose()


def test_a_new_database_is_migrated_and_an_outdated_one_refused(database_url):
    db = Database(database_url)
    try:
        assert prepare(db.engine, db.url).startswith("migrated a new database")
        assert prepare(db.engine, db.url) == "up to date"
        with db.engine.begin() as connection:  # tables of an older metatune: no version row
            connection.execute(text(f"DELETE FROM {VERSION_TABLE}"))
        with pytest.raises(OutdatedDatabase, match="run `metatune db upgrade`"):
            prepare(db.engine, db.url)
    finally:
        db.dispose()


def test_serve_refuses_an_outdated_database_in_one_line(sqlite_url, capsys, monkeypatch):
    from metatune.cli import main

    upgrade(sqlite_url)
    db = Database(sqlite_url)
    with db.engine.begin() as connection:
        connection.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    db.dispose()
    monkeypatch.setenv("METATUNE_DATABASE_URL", sqlite_url)
    assert main(["serve", "--no-worker"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metatune db upgrade" in err and "Traceback" not in err
