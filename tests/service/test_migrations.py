"""Alembic: upgrade → downgrade → upgrade, models and migrations agree, outdated databases refused,
0001 and 0002 rows kept through 0002 and 0003 and back, points of every form stored exactly,
0004's keys, and 0005's trial node (NULL for older rows, dropped on downgrade)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from metatune.job import TuningJob
from metatune.point import MetaGradient, Point
from metatune.schedule import Shape
from metatune.tuners import ChainStep
from metatune.tuners.base import Trial as LibraryTrial
from metatune_service import crud
from metatune_service.core.db import Database
from metatune_service.core.migrations import (VERSION_TABLE, OutdatedDatabase, current_revision, downgrade, head_revision,
                                     prepare, upgrade)
from metatune_service.models import Base, MetagradStep, Trial
from metatune_service.status import JobStatus

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


def insert_0002_per_group_rows(db: Database, job_id: str = "grouped") -> None:
    """A per-group job of revision 0002 with a trial, its metric and a metagrad step whose
    ∂ℓ/∂η of group "2" was not finite (null), in raw SQL."""
    now = "2026-01-02 00:00:00"
    spec = {"objective": "mlp-regression", "method": "metagrad", "space": {"groups": ["0", "2"]}}
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO jobs (id, owner, status, spec, method, objective, seed, created_at, gradient_evals, "
            "cancel_requested, attempts) VALUES (:id, 'alice', 'succeeded', :spec, 'metagrad', 'mlp-regression', 0, "
            ":now, 31.0, false, 1)"), {"id": job_id, "spec": json.dumps(spec), "now": now})
        connection.execute(text(
            "INSERT INTO trials (job_id, number, lr_groups, momentum_groups, status, value, gradient_evals, "
            "cumulative_evals, wall_seconds, created_at) VALUES (:id, 0, :lr, :momentum, 'completed', 0.25, 31.0, "
            "31.0, 0.1, :now)"), {"id": job_id, "now": now, "lr": json.dumps(GROUP_LR),
                                  "momentum": json.dumps(GROUP_MOMENTUM)})
        connection.execute(text("INSERT INTO trial_metrics (trial_id, step, name, value) "
                                "SELECT id, 0, 'dvalue_dlr[0]', 1.0 FROM trials WHERE job_id = :id"), {"id": job_id})
        connection.execute(text(
            "INSERT INTO metagrad_steps (job_id, trial_number, start, step, lr_groups, momentum_groups, value, "
            "dvalue_dlr_groups, dvalue_dmomentum_groups, accepted) VALUES (:id, 0, 0, 0, :lr, :momentum, 0.25, "
            ":dlr, :dmomentum, true)"),
            {"id": job_id, "lr": json.dumps(GROUP_LR), "momentum": json.dumps(GROUP_MOMENTUM),
             "dlr": json.dumps({"0": 1.0, "2": None}), "dmomentum": json.dumps({"0": 3.0, "2": 4.0})})


GROUP_LR, GROUP_MOMENTUM = {"0": 0.1, "2": 0.2}, {"0": 0.5, "2": 0.9}


def rows(db: Database, sql: str) -> list[tuple]:
    with db.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql)).all()]


def json_rows(db: Database, sql: str) -> list[tuple]:
    """Rows with their JSON objects (text on SQLite) decoded."""
    return [tuple(json.loads(v) if isinstance(v, str) and v.startswith("{") else v for v in row)
            for row in rows(db, sql)]


def test_0002_keeps_0001_rows_and_its_downgrade_removes_only_per_group_jobs(database_url):
    upgrade(database_url, "0001")
    db = Database(database_url)
    try:
        insert_0001_rows(db)
        upgrade(database_url, "0002")
        assert rows(db, "SELECT lr, momentum, lr_groups, momentum_groups, value FROM trials") == [
            (0.1, 0.9, None, None, 0.5)]
        assert rows(db, "SELECT lr, dvalue_dlr, dvalue_dmomentum, dvalue_dlr_groups FROM metagrad_steps") == [
            (0.1, 2.0, -1.0, None)]
        insert_0002_per_group_rows(db)
        assert json_rows(db, "SELECT lr, momentum, lr_groups, momentum_groups FROM trials WHERE job_id = 'grouped'") \
            == [(None, None, GROUP_LR, GROUP_MOMENTUM)]
        downgrade(database_url, "0001")
        columns = {c["name"]: c for c in inspect(db.engine).get_columns("trials")}
        assert "lr_groups" not in columns and not columns["lr"]["nullable"] and not columns["momentum"]["nullable"]
        step_columns = {c["name"] for c in inspect(db.engine).get_columns("metagrad_steps")}
        assert not {c for c in step_columns if c.endswith("_groups")}
        assert rows(db, "SELECT id FROM jobs") == [("old",)]
        assert rows(db, "SELECT job_id, lr, momentum FROM trials") == [("old", 0.1, 0.9)]
        assert rows(db, "SELECT name, value FROM trial_metrics") == [("dvalue_dlr", 2.0)]
        assert rows(db, "SELECT job_id FROM metagrad_steps") == [("old",)]
        upgrade(database_url)
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()


def library_trial(number: int, point: Point, gradient: MetaGradient | None = None) -> LibraryTrial:
    metrics = {} if gradient is None else gradient.to_metrics(point.groups, point.knots)
    return LibraryTrial(number=number, point=point, value=0.25, diverged=False, gradient_evals=31.0,
                        cumulative_evals=31.0 * (number + 1), wall_time=0.1, spectral_radius=0.5, stable=True,
                        metrics=metrics, chain=None if gradient is None else ChainStep(0, True, gradient))


KNOTS_POINT = Point.of([0.1 + 0.2, 1e-7 / 3, 0.05], [0.9, 0.5, 1.0 / 3])  # floats that print with 17 digits
WARMUP_POINT = Point.of(0.3, 0.8, Shape.warmup_cosine(1.0 / 7, 0.01))
GROUP_KNOTS_POINT = Point.of({"0": [0.1, 0.2], "2": [0.3, 0.4]}, {"0": [0.5, 0.6], "2": [0.7, 0.8]})


def write_job(db: Database, spec: TuningJob, trials: list[LibraryTrial]) -> str:
    [job] = crud.create_jobs(db, owner="alice", specs=[spec]).jobs
    assert crud.claim_job(db, worker="w", lease_seconds=60, max_attempts=3).id == job.id
    assert crud.write_trials(db, job_id=job.id, worker="w", trials=trials, lambda_max=None)
    crud.finish_job(db, job_id=job.id, worker="w", status=JobStatus.SUCCEEDED)
    return job.id


def test_0003_reads_older_rows_back_unchanged_and_its_downgrade_removes_only_scheduled_jobs(database_url):
    upgrade(database_url, "0002")
    db = Database(database_url)
    try:
        insert_0001_rows(db)
        insert_0002_per_group_rows(db)
        upgrade(database_url)
        (old,) = crud.library_trials(db, job_id="old")
        assert (old.point, old.value, old.metrics) == (Point.scalar(0.1, 0.9), 0.5, {"dvalue_dlr": 2.0})
        (grouped,) = crud.library_trials(db, job_id="grouped")
        assert grouped.point == Point.of(GROUP_LR, GROUP_MOMENTUM) and grouped.metrics == {"dvalue_dlr[0]": 1.0}
        with db.read() as session:
            trials = {t.job_id: t for t in session.scalars(select(Trial))}
            steps = {s.job_id: s for s in session.scalars(select(MetagradStep))}
        assert (trials["old"].lr, trials["old"].momentum) == (0.1, 0.9)  # the sort keys
        assert (trials["grouped"].lr, trials["grouped"].momentum) == (None, None)
        assert crud.point_of(steps["old"]) == Point.scalar(0.1, 0.9)
        assert steps["old"].meta_gradient == {"lr": 2.0, "momentum": -1.0} and steps["old"].dvalue_dlr == 2.0
        assert crud.point_of(steps["grouped"]) == Point.of(GROUP_LR, GROUP_MOMENTUM)
        assert steps["grouped"].meta_gradient == {"lr": {"0": 1.0, "2": None}, "momentum": {"0": 3.0, "2": 4.0}}
        gradient = MetaGradient((1.0, math.nan, -2.0), (3.0, 4.0, math.inf), growth_rate=0.1, amplification=2.0)
        knots = write_job(db, TuningJob("quadratic", "metagrad", schedule=3), [library_trial(0, KNOTS_POINT, gradient)])
        warm = write_job(db, TuningJob("quadratic", "tpe", schedule={"shape": "warmup-cosine"}),
                         [library_trial(0, WARMUP_POINT)])
        group_knots = write_job(db, TuningJob("mlp-regression", "tpe", groups=["0", "2"], schedule=2),
                                [library_trial(0, GROUP_KNOTS_POINT)])
        for job_id, point in ((knots, KNOTS_POINT), (warm, WARMUP_POINT), (group_knots, GROUP_KNOTS_POINT)):
            (stored,) = crud.library_trials(db, job_id=job_id)
            assert stored.point == point and stored.point.to_json() == point.to_json()
        with db.read() as session:
            trial = session.scalar(select(Trial).where(Trial.job_id == warm))
            step = session.scalar(select(MetagradStep).where(MetagradStep.job_id == knots))
        assert (trial.lr, trial.momentum) == (0.3, 0.8)  # the peak η and β of a warm-up + cosine point
        assert step.meta_gradient == {"lr": [1.0, None, -2.0], "momentum": [3.0, 4.0, None]}
        assert (step.lr, step.dvalue_dlr, step.dvalue_dmomentum) == (0.1 + 0.2, 1.0, 3.0)  # the first knot's
        downgrade(database_url, "0002")
        assert {c["name"] for c in inspect(db.engine).get_columns("trials")} >= {"lr_groups", "momentum_groups"}
        assert "point" not in {c["name"] for c in inspect(db.engine).get_columns("trials")}
        assert sorted(rows(db, "SELECT id FROM jobs")) == [("grouped",), ("old",)]
        assert sorted(json_rows(db, "SELECT job_id, lr, momentum, lr_groups, momentum_groups FROM trials")) == [
            ("grouped", None, None, GROUP_LR, GROUP_MOMENTUM), ("old", 0.1, 0.9, None, None)]
        assert sorted(json_rows(db, "SELECT job_id, dvalue_dlr, dvalue_dmomentum, dvalue_dlr_groups, "
                                    "dvalue_dmomentum_groups FROM metagrad_steps")) == [
            ("grouped", None, None, {"0": 1.0, "2": None}, {"0": 3.0, "2": 4.0}), ("old", 2.0, -1.0, None, None)]
        assert len(rows(db, "SELECT name FROM trial_metrics")) == 2
        upgrade(database_url)
        assert current_revision(db.engine) == head_revision()
        assert [t.point for t in crud.library_trials(db, job_id="grouped")] == [Point.of(GROUP_LR, GROUP_MOMENTUM)]
    finally:
        db.dispose()


def insert_job(db: Database, job_id: str, owner: str = "alice", key: str | None = None) -> None:
    """A job row in raw SQL (with an idempotency key from 0004 on)."""
    columns, values = "", ""
    if key is not None:
        columns, values = ", idempotency_key, request_hash", ", :key, 'h'"
    with db.engine.begin() as connection:
        connection.execute(text(
            f"INSERT INTO jobs (id, owner, status, spec, method, objective, seed, created_at, gradient_evals, "
            f"cancel_requested, attempts{columns}) VALUES (:id, :owner, 'queued', '{{}}', 'tpe', 'quadratic', 0, "
            f"'2026-01-01 00:00:00', 0.0, false, 0{values})"), {"id": job_id, "owner": owner, "key": key})


def test_0004_adds_keys_unique_per_owner_and_its_downgrade_keeps_every_row(database_url):
    upgrade(database_url, "0003")
    db = Database(database_url)
    try:
        insert_job(db, "before")
        upgrade(database_url, "0004")
        assert rows(db, "SELECT id, idempotency_key, request_hash FROM jobs") == [("before", None, None)]
        assert ("owner", "created_at") in {tuple(ix["column_names"]) for ix in inspect(db.engine).get_indexes("jobs")}
        insert_job(db, "keyed", key="k1")
        insert_job(db, "other-owner", owner="bob", key="k1")  # keys are per owner
        insert_job(db, "no-key")  # NULL keys never collide
        with pytest.raises(IntegrityError):
            insert_job(db, "again", key="k1")
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO comparisons (id, owner, name, objective, spec, created_at, "
                                    "idempotency_key) VALUES ('c1', 'alice', 'c', 'quadratic', '{}', "
                                    "'2026-01-01 00:00:00', 'k1')"))
        with pytest.raises(IntegrityError), db.engine.begin() as connection:
            connection.execute(text("INSERT INTO comparisons (id, owner, name, objective, spec, created_at, "
                                    "idempotency_key) VALUES ('c2', 'alice', 'c', 'quadratic', '{}', "
                                    "'2026-01-01 00:00:00', 'k1')"))
        downgrade(database_url, "0003")
        assert "idempotency_key" not in {c["name"] for c in inspect(db.engine).get_columns("jobs")}
        assert "idempotency_key" not in {c["name"] for c in inspect(db.engine).get_columns("comparisons")}
        assert sorted(rows(db, "SELECT id, owner FROM jobs")) == [
            ("before", "alice"), ("keyed", "alice"), ("no-key", "alice"), ("other-owner", "bob")]
        assert rows(db, "SELECT id FROM comparisons") == [("c1",)]
        upgrade(database_url)
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()


RAY_NODE = "8d2f" * 14  # 56 hex digits, as Ray's node ids


def test_0005_adds_a_null_node_to_every_trial_and_its_downgrade_keeps_every_trial(database_url):
    upgrade(database_url, "0004")
    db = Database(database_url)
    try:
        insert_job(db, "old")
        with db.engine.begin() as connection:  # a trial of revision 0004 (raw SQL: the models describe head)
            connection.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = 'old'"))
            connection.execute(text(
                "INSERT INTO trials (job_id, number, point, lr, momentum, status, value, gradient_evals, "
                "cumulative_evals, wall_seconds, created_at) VALUES ('old', 0, :point, 0.1, 0.9, 'completed', 0.5, "
                "31.0, 31.0, 0.1, '2026-01-01 00:00:00')"), {"point": json.dumps({"lr": 0.1, "momentum": 0.9})})
        upgrade(database_url, "0005")
        columns = {c["name"]: c for c in inspect(db.engine).get_columns("trials")}
        assert columns["node"]["nullable"] and getattr(columns["node"]["type"], "length", None) == 64
        assert rows(db, "SELECT job_id, number, node FROM trials") == [("old", 0, None)]
        assert [t.node for t in crud.library_trials(db, job_id="old")] == [None]
        ray = write_job(db, TuningJob("quadratic", "tpe"), [replace(library_trial(0, Point.scalar(0.2, 0.8)),
                                                                    node=RAY_NODE)])
        assert rows(db, f"SELECT node FROM trials WHERE job_id = '{ray}'") == [(RAY_NODE,)]
        assert [t.node for t in crud.library_trials(db, job_id=ray)] == [RAY_NODE]
        downgrade(database_url, "0004")
        assert "node" not in {c["name"] for c in inspect(db.engine).get_columns("trials")}
        assert sorted(rows(db, "SELECT job_id, number FROM trials")) == sorted([("old", 0), (ray, 0)])
        upgrade(database_url)
        assert current_revision(db.engine) == head_revision()
        assert sorted(rows(db, "SELECT job_id, node FROM trials")) == sorted([("old", None), (ray, None)])
    finally:
        db.dispose()


def test_a_wheel_carries_its_migrations_and_upgrades_a_database_without_the_source_tree(tmp_path):
    """A plain (non-editable) install: the wheel holds every migration, and the package
    unpacked away from the source tree (Python started without site, so the editable
    install's finder is not loaded) upgrades a new SQLite file to head."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import zipfile
    from pathlib import Path

    root, source = Path(__file__).resolve().parents[2], tmp_path / "src"
    source.mkdir()  # what deploy/Dockerfile copies, built away from the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source)
    for name in ("metatune", "metatune_service"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("metatune-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    versions = {f"metatune_service/migrations/versions/{p.name}"
                for p in (root / "metatune_service/migrations/versions").glob("*.py")}
    assert len(versions) >= 5 and versions <= names
    assert {"metatune_service/migrations/env.py", "metatune_service/migrations/script.py.mako"} <= names
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = (f"import sys; sys.path[:0] = [{str(tmp_path / 'site')!r}, {sysconfig.get_paths()['purelib']!r}]\n"
            "from metatune_service.core import migrations\n"
            f"assert str(migrations.ALEMBIC_DIR).startswith({str(tmp_path / 'site')!r}), migrations.ALEMBIC_DIR\n"
            f"migrations.upgrade({url!r})\n"
            "from metatune_service.core.db import Database\n"
            f"print(migrations.current_revision(Database({url!r}).engine))")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [head_revision()]
