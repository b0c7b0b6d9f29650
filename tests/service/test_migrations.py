"""Alembic: upgrade → downgrade → upgrade, models and migrations agree, outdated databases refused,
0001 rows kept through 0002 and back."""

from __future__ import annotations

import json
import math

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from metatune.job import TuningJob
from metatune.point import MetaGradient, Point
from metatune.tuners import ChainStep
from metatune.tuners.base import Trial as LibraryTrial
from metatune_service import crud
from metatune_service.core.db import Database
from metatune_service.core.migrations import (VERSION_TABLE, OutdatedDatabase, current_revision, downgrade, head_revision,
                                     prepare, upgrade)
from metatune_service.models import Base, MetagradStep, Trial

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


def insert_0001_rows(db: Database) -> None:
    """A scalar job of revision 0001 with a trial, its metric and a metagrad step (raw SQL: the
    models describe head)."""
    now = "2026-01-01 00:00:00"
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO jobs (id, owner, status, spec, method, objective, seed, created_at, gradient_evals, "
            "cancel_requested, attempts) VALUES ('old', 'alice', 'succeeded', :spec, 'metagrad', 'quadratic', 0, "
            ":now, 31.0, false, 1)"), {"spec": json.dumps({"space": {"lr": {}, "momentum": {}}}), "now": now})
        connection.execute(text(
            "INSERT INTO trials (job_id, number, lr, momentum, status, value, gradient_evals, cumulative_evals, "
            "wall_seconds, created_at) VALUES ('old', 0, 0.1, 0.9, 'completed', 0.5, 31.0, 31.0, 0.1, :now)"),
            {"now": now})
        connection.execute(text("INSERT INTO trial_metrics (trial_id, step, name, value) "
                                "SELECT id, 0, 'dvalue_dlr', 2.0 FROM trials"))
        connection.execute(text(
            "INSERT INTO metagrad_steps (job_id, trial_number, start, step, lr, momentum, value, dvalue_dlr, "
            "dvalue_dmomentum, accepted) VALUES ('old', 0, 0, 0, 0.1, 0.9, 0.5, 2.0, -1.0, true)"))


def per_group_trial(number: int) -> LibraryTrial:
    point = Point.of({"0": 0.1, "2": 0.2}, {"0": 0.5, "2": 0.9})
    gradient = MetaGradient((1.0, math.nan), (3.0, 4.0), growth_rate=1.0, amplification=1.0)
    return LibraryTrial(number=number, point=point, value=0.25, diverged=False, gradient_evals=31.0,
                        cumulative_evals=31.0, wall_time=0.1, spectral_radius=0.5, stable=True,
                        metrics=gradient.to_metrics(point.groups), chain=ChainStep(0, True, gradient))


def test_0002_keeps_0001_rows_and_its_downgrade_removes_only_per_group_jobs(database_url):
    upgrade(database_url, "0001")
    db = Database(database_url)
    try:
        insert_0001_rows(db)
        upgrade(database_url)
        (old,) = crud.library_trials(db, job_id="old")
        assert (old.lr, old.momentum, old.value, old.metrics) == (0.1, 0.9, 0.5, {"dvalue_dlr": 2.0})
        with db.read() as session:
            (step,) = session.scalars(select(MetagradStep)).all()
        assert crud.point_of(step) == Point.scalar(0.1, 0.9) and step.lr_groups is None and step.dvalue_dlr == 2.0
        spec = TuningJob("mlp-regression", "metagrad", groups=["0", "2"])
        (job,), _ = crud.create_jobs(db, owner="alice", specs=[spec])
        crud.claim_job(db, worker="w", lease_seconds=60, max_attempts=3)
        assert crud.write_trials(db, job_id=job.id, worker="w", trials=[per_group_trial(0)], lambda_max=None)
        (new,) = crud.library_trials(db, job_id=job.id)
        assert (new.lr, new.momentum) == ({"0": 0.1, "2": 0.2}, {"0": 0.5, "2": 0.9})
        with db.read() as session:
            stored = session.scalar(select(Trial).where(Trial.job_id == job.id))
            step = session.scalar(select(MetagradStep).where(MetagradStep.job_id == job.id))
        assert stored.lr is None and stored.momentum is None and stored.lr_groups == {"0": 0.1, "2": 0.2}
        assert step.lr is None and step.dvalue_dlr_groups == {"0": 1.0, "2": None}  # NaN stored as null
        assert step.dvalue_dmomentum_groups == {"0": 3.0, "2": 4.0}
        downgrade(database_url, "0001")
        columns = {c["name"]: c for c in inspect(db.engine).get_columns("trials")}
        assert "lr_groups" not in columns and not columns["lr"]["nullable"] and not columns["momentum"]["nullable"]
        step_columns = {c["name"] for c in inspect(db.engine).get_columns("metagrad_steps")}
        assert not {c for c in step_columns if c.endswith("_groups")}
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM jobs")).scalars().all() == ["old"]
            assert connection.execute(text("SELECT job_id, lr, momentum FROM trials")).all() == [("old", 0.1, 0.9)]
            assert connection.execute(text("SELECT name, value FROM trial_metrics")).all() == [("dvalue_dlr", 2.0)]
            assert connection.execute(text("SELECT job_id FROM metagrad_steps")).scalars().all() == ["old"]
        upgrade(database_url)
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()
