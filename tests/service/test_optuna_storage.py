"""Every job is also an Optuna study: the worker writes it (one Optuna trial per recorded
trial, values exact, diverged and failed trials FAIL with ρ or the error, metagrad's
meta-gradient in user attrs), exporting again adds nothing, ``optuna.load_study`` and
``optuna-dashboard`` read it, and the storage defaults to a place apart from the service's
tables (a sibling SQLite file, a PostgreSQL schema)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from metatune.cli import main
from metatune.job import TuningJob
from metatune.objectives import SearchSpace
from metatune.point import MetaGradient, Point
from metatune.schedule import Schedule, Shape
from metatune.tuners import Trial as LibraryTrial
from metatune.tuners import TrialStatus
from metatune.tuners.records import ChainStep
from metatune_service import crud, optuna_storage
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.status import JobStatus

from .conftest import free_port, wait_for

QUAD = {"objective": "quadratic", "objective_params": {"dim": 10, "kappa": 100.0},
        "budget": {"inner_steps": 30, "gradient_evals": 31 * 10}}
JOBS = [{**QUAD, "method": "tpe"}, {**QUAD, "method": "metagrad", "space": {"schedule": {"knots": 2}}}]
SPACE = SearchSpace(lr_low=1e-3, lr_high=0.5, momentum_low=0.0, momentum_high=0.95)
GROUPS = ("w", "b")


@pytest.fixture(autouse=True)
def _storages(monkeypatch):
    """No storage setting from the environment; each test's cached Optuna storages closed after it."""
    monkeypatch.delenv("METATUNE_OPTUNA_STORAGE", raising=False)
    yield
    optuna_storage.dispose()


@contextmanager
def storage_at(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """Optuna's own storage at ``url``, as a reader opens it, its connections closed after."""
    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def load_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """``optuna.load_study``'s trials of study ``name`` at ``url``, by number."""
    with storage_at(url) as storage:
        return sorted(optuna.load_study(study_name=name, storage=storage).trials, key=lambda t: t.number)


def wait_for_study(storage: optuna.storages.BaseStorage, name: str, trials: int, timeout: float = 30) -> optuna.Study:
    """The study once it holds ``trials`` trials (the worker writes the last ones just after the
    job has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            if len(study.trials) >= trials or time.monotonic() > deadline:
                return study
        except KeyError:  # not created yet
            assert time.monotonic() < deadline, f"no study {name}"
        time.sleep(0.2)


def assert_study_matches(study: optuna.Study, db: Database, job_id: str, api_trials: list[dict]) -> None:
    """One Optuna trial per recorded trial, in order, with its exact value or FAIL, its point
    as params, ρ and the meta-gradient (as the API shows it) in user attrs."""
    rows = crud.list_trials(db, job_id=job_id)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.number for t in trials] == [r.number for r in rows] == [t["number"] for t in api_trials]
    assert [t.user_attrs[optuna_storage.TRIAL_ATTR] for t in trials] == [r.number for r in rows]
    for trial, row, shown in zip(trials, rows, api_trials):
        assert trial.params == pytest.approx(crud.point_of(row).to_params(), rel=1e-12)
        assert trial.user_attrs["point"] == row.point and trial.user_attrs["status"] == row.status
        assert trial.user_attrs["cumulative_evals"] == row.cumulative_evals
        if row.status == TrialStatus.COMPLETED:
            assert trial.state == TrialState.COMPLETE and trial.value == row.value  # exact
        else:
            assert trial.state == TrialState.FAIL and trial.value is None
            assert trial.user_attrs["spectral_radius"] == row.spectral_radius
        assert trial.user_attrs.get("meta_gradient") == shown["meta_gradient"]


def test_every_job_the_worker_runs_is_a_study_with_every_trial_and_its_value(served, worker):
    client = served.client()
    ids = [client.post("/v1/jobs", json=spec).json()["id"] for spec in JOBS]
    url = optuna_storage.storage_url(served.settings)
    jobs = [wait_for(client, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(JOBS), [job["error"] for job in jobs]
    for done, spec in zip(jobs, JOBS):
        api_trials = client.get(f"/v1/jobs/{done['id']}/trials").json()["items"]
        name = optuna_storage.study_name(done["id"])
        wait_for_study(optuna_storage.storage(url), name, len(api_trials))
        with storage_at(url) as storage:  # as any Optuna reader opens it
            study = optuna.load_study(study_name=name, storage=storage)
            assert_study_matches(study, served.db, done["id"], api_trials)
            assert study.user_attrs["method"] == spec["method"] and study.user_attrs["owner"] == "alice"
            assert study.user_attrs["spec"] == done["spec"] and study.user_attrs["status"] == "succeeded"
            assert study.best_value == done["best_trial"]["value"]
            assert optuna_storage.export_job(served.db, served.settings, done["id"]) == 0  # nothing twice
            assert len(study.trials) == len(api_trials)
    metagrad = load_trials(url, optuna_storage.study_name(ids[1]))
    assert {"lr@0", "lr@1", "momentum@0", "momentum@1"} == set(metagrad[0].params)
    assert any("dvalue_dlr@1" in t.user_attrs and "chain_step" in t.user_attrs for t in metagrad)


def library_trial(number: int, point: Point, value: float, status: TrialStatus = TrialStatus.COMPLETED,
                  rho: float = 0.5, error: str | None = None, gradient: MetaGradient | None = None,
                  node: str | None = None) -> LibraryTrial:
    return LibraryTrial(number=number, point=point, value=value, diverged=status == TrialStatus.DIVERGED,
                        gradient_evals=31.0, cumulative_evals=31.0 * (number + 1), wall_time=0.25,
                        spectral_radius=rho, stable=rho < 1, status=status, error=error, lambda_max=12.5, node=node,
                        metrics={} if gradient is None else gradient.to_metrics(GROUPS, 2),
                        chain=None if gradient is None else ChainStep(0, accepted=number == 0, gradient=gradient))


def point(lr: float, momentum: float) -> Point:
    return Point.of({g: [lr, lr / 2] for g in GROUPS}, {g: [momentum, momentum] for g in GROUPS})


TRIALS = [
    library_trial(0, point(0.1, 0.9), 0.25, gradient=MetaGradient((1.0, 2.0, 3.0, 4.0), (-1.0, 0.0, 0.5, math.nan),
                                                                   growth_rate=-0.1, amplification=2.0)),
    library_trial(1, point(0.4, 0.5), math.inf, TrialStatus.DIVERGED, rho=1.7),
    library_trial(2, point(0.01, 0.3), math.inf, TrialStatus.FAILED, rho=math.nan, error="RuntimeError: boom",
                  node="9c" * 28),  # evaluated on a Ray node (its 56-hex-digit id)
    library_trial(3, point(0.5 * (1 + 1e-12), 0.95 + 1e-13), 0.125),  # a rounding error past the box
]


def recorded_job(db: Database, trials: list[LibraryTrial] = TRIALS, finish: bool = True) -> str:
    """A metagrad job over two groups and two knots, its trials written as a worker writes them."""
    spec = TuningJob("quadratic", "metagrad", budget=1_000, steps=30, space=SPACE, groups=list(GROUPS),
                     schedule=Schedule(knots=2))
    [job] = crud.create_jobs(db, owner="alice", specs=[spec]).jobs
    assert crud.claim_job(db, worker="w", lease_seconds=60, max_attempts=3).id == job.id
    crud.write_trials(db, job_id=job.id, worker="w", trials=trials, lambda_max=12.5)
    if finish:
        crud.finish_job(db, job_id=job.id, worker="w", status=JobStatus.SUCCEEDED)
    return job.id


def test_diverged_and_failed_trials_fail_with_rho_or_the_error_and_points_are_clipped_into_the_space(
        migrated, database_url):
    job_id = recorded_job(migrated, TRIALS[:2], finish=False)
    url = optuna_storage.storage_url(Settings(database_url=database_url))
    assert optuna_storage.export_job(migrated, url, job_id) == 2
    crud.write_trials(migrated, job_id=job_id, worker="w", trials=TRIALS[2:], lambda_max=12.5)
    assert optuna_storage.export_job(migrated, url, job_id) == 2  # only the new ones
    assert optuna_storage.export_job(migrated, url, job_id) == 0
    trials = load_trials(url, optuna_storage.study_name(job_id))
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.value for t in trials] == [0.25, None, None, 0.125]
    done, diverged, failed, clipped = (t.user_attrs for t in trials)
    assert diverged["spectral_radius"] == 1.7 and diverged["stable"] is False and diverged["lambda_max"] == 12.5
    assert diverged["status"] == "diverged" and "error" not in diverged
    assert failed["error"] == "RuntimeError: boom" and failed["spectral_radius"] is None
    assert failed["node"] == "9c" * 28 and "node" not in done  # in-process: no node
    assert done["meta_gradient"]["lr"] == {"w": [1.0, 2.0], "b": [3.0, 4.0]}
    assert done["meta_gradient"]["momentum"] == {"w": [-1.0, 0.0], "b": [0.5, None]}  # NaN: null
    assert done["dvalue_dlr[b]@1"] == 4.0 and done["chain_start"] == 0 and done["accepted"] is True
    assert done["chain_step"] == 0 and done["stable"] is True
    assert trials[3].params["lr[w]@0"] == 0.5 and trials[3].params["momentum[b]@1"] == 0.95
    assert clipped["point"]["lr"]["w"][0] == 0.5 * (1 + 1e-12)  # the exact point
    assert trials[0].distributions["lr[w]@0"] == optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)
    assert trials[1].params == pytest.approx(point(0.4, 0.5).to_params(), rel=0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_studies_go_to_their_own_schema_beside_the_service_tables(migrated, database_url):
    job_id = recorded_job(migrated)
    assert optuna_storage.export_job(migrated, Settings(database_url=database_url), job_id) == 4
    inspector = sa.inspect(migrated.engine)
    assert {"studies", "trials", "alembic_version"} <= set(inspector.get_table_names(schema="optuna"))
    assert "studies" not in inspector.get_table_names(schema="public")
    assert [t.number for t in crud.list_trials(migrated, job_id=job_id)] == [0, 1, 2, 3]  # ours untouched


def dashboard(url: str) -> tuple[subprocess.Popen, str]:
    """``optuna-dashboard <url>`` on a free port, once it answers."""
    pytest.importorskip("optuna_dashboard")
    port = free_port()
    binary = Path(sys.executable).parent / "optuna-dashboard"
    process = subprocess.Popen([str(binary), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/api/meta", timeout=2)
            return process, base
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"optuna-dashboard did not start: {process.communicate()[0]}") from None
            time.sleep(0.2)


def test_optuna_dashboard_opens_the_storage_and_serves_each_study(migrated, database_url):
    first, second = recorded_job(migrated), recorded_job(migrated, TRIALS[:1])
    settings = Settings(database_url=database_url)
    assert optuna_storage.export_jobs(migrated, settings) == (2, 5)
    process, base = dashboard(optuna_storage.storage_url(settings))
    try:
        studies = httpx.get(f"{base}/api/studies", timeout=10).json()["study_summaries"]
        by_name = {s["study_name"]: s for s in studies}
        assert set(by_name) == {optuna_storage.study_name(first), optuna_storage.study_name(second)}
        attrs = {a["key"]: a["value"] for a in by_name[optuna_storage.study_name(first)]["user_attrs"]}
        assert attrs["method"] == "metagrad" and attrs["status"] == "succeeded"
        study = by_name[optuna_storage.study_name(first)]
        detail = httpx.get(f"{base}/api/studies/{study['study_id']}", params={"after": 0}, timeout=10).json()
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Fail", "Fail", "Complete"]
        assert [t.get("values") for t in detail["trials"]] == [[0.25], None, None, [0.125]]
        assert detail["best_trials"][0]["values"] == [0.125]
        diverged = {a["key"]: a["value"] for a in detail["trials"][1]["user_attrs"]}
        assert float(diverged["spectral_radius"]) == 1.7
        assert {p["name"] for p in detail["trials"][0]["params"]} == set(point(0.1, 0.9).to_params())
    finally:
        process.kill()
        process.communicate()


def test_the_export_command_writes_every_started_job_and_says_how_to_open_them(migrated, database_url, monkeypatch,
                                                                               capsys, tmp_path):
    job_id = recorded_job(migrated)
    crud.create_jobs(migrated, owner="bob", specs=[TuningJob("quadratic", "tpe")])  # queued: no study
    monkeypatch.setenv("METATUNE_DATABASE_URL", database_url)
    target = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main(["db", "export-optuna", "--storage", target]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 study (4 new trials)" in out and f"optuna-dashboard {target}" in out
    with storage_at(target) as storage:
        assert optuna.get_all_study_names(storage) == [optuna_storage.study_name(job_id)]
    assert main(["db", "export-optuna", "--storage", target, "--job", job_id]) == 0
    assert "wrote 1 study (0 new trials)" in capsys.readouterr().out
    assert main(["db", "export-optuna", "--job", "no-such-job"]) == 2
    assert "no job no-such-job" in capsys.readouterr().err


def test_a_failed_export_is_logged_and_raises_nothing(migrated, database_url, tmp_path, caplog):
    job_id = recorded_job(migrated)
    (tmp_path / "a-file").write_text("")
    broken = Settings(database_url=database_url, optuna_storage=f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
    export = optuna_storage.JobExport(migrated, broken, job_id, every=0.0)
    with caplog.at_level(logging.ERROR, logger="metatune.optuna"):
        export.tick()
        export.tick()  # the live export stopped at the first failure
        export.final()
    assert [r.message for r in caplog.records] == [f"job {job_id}: its Optuna study could not be written to "
                                                   f"{optuna_storage.shown(broken.optuna_storage)}"] * 2


def test_a_warmup_cosine_point_has_its_fractions_as_params_in_the_searched_ranges():
    point = Point.of(0.5, 0.9, Shape.warmup_cosine(0.1, 1e-3 * (1 - 1e-12)))
    params, distributions = optuna_storage.trial_params(point, SPACE)
    assert params == {"lr": 0.5, "momentum": 0.9, "warmup": 0.1, "final": 1e-3}  # final clipped up into its range
    assert distributions["warmup"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert distributions["final"] == optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    assert distributions["momentum"] == optuna.distributions.FloatDistribution(0.0, 0.95)


@pytest.mark.parametrize(("database", "chosen", "expected"), [
    ("sqlite:////srv/data/metatune.db", None, "sqlite:////srv/data/metatune-optuna.db"),
    ("sqlite:///metatune.db", None, "sqlite:///metatune-optuna.db"),
    ("sqlite:///:memory:", None, None),
    ("postgresql://postgres@127.0.0.1:5432/test", None,
     "postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3Doptuna"),
    ("postgresql+psycopg://app:pw@db/tuning?options=-cstatement_timeout%3D5000", None,
     "postgresql+psycopg://app:pw@db/tuning?options=-cstatement_timeout%3D5000+-csearch_path%3Doptuna"),
    ("mysql://db/tuning", None, None),
    ("sqlite:///metatune.db", "off", None),
    ("postgresql://db/tuning", " OFF ", None),
    ("sqlite:///metatune.db", "postgresql://db/studies", "postgresql+psycopg://db/studies"),
    ("postgresql://db/tuning", "sqlite:////srv/studies.db", "sqlite:////srv/studies.db"),
])
def test_the_storage_defaults_apart_from_the_service_tables_or_follows_the_setting(database, chosen, expected):
    assert optuna_storage.storage_url(Settings(database_url=database, optuna_storage=chosen)) == expected


def test_the_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("METATUNE_OPTUNA_STORAGE", "off")
    assert optuna_storage.storage_url(Settings(database_url="sqlite:///x.db")) is None
