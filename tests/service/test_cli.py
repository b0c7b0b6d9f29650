"""The service's commands reach ``metatune`` through entry points: the library never imports
the service, and the service's user errors and configuration errors (run as the real command)
are one line on stderr with exit code 2."""

from __future__ import annotations

import ast
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import metatune
from metatune.cli import build_parser, main

from .conftest import free_port


def test_the_library_never_imports_the_service():
    imported = []
    for path in Path(metatune.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imported += [f"{path.name}: {n}" for n in names
                         if n.split(".")[0] in ("metatune_service", "service")]
    assert imported == []


def test_the_service_commands_and_benchmark_come_through_entry_points():
    assert {p.value for p in entry_points(group="metatune.commands")} == {"metatune_service.cli"}
    assert {p.value for p in entry_points(group="metatune.benchmarks")} == {"metatune_service.bench"}
    parser = build_parser()
    commands = (["serve"], ["worker"], ["submit", "job.json"], ["jobs"], ["db", "current"],
                ["token", "create", "--owner", "alice"])
    assert {parser.parse_args(argv).handler.__module__ for argv in commands} == {"metatune_service.cli"}
    assert {parser.parse_args(["bench", "service"]).run_benchmark.__module__} == {"metatune_service.bench"}


def test_an_unreachable_server_is_one_line_on_stderr_and_exit_code_two(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["compare", "--server", url, "--objective", "quadratic", "--methods", "tpe", "--seeds", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot reach the metatune server" in err
    assert err.startswith("metatune compare: error:") and "Traceback" not in err


@pytest.mark.parametrize("argv", [["submit", "no-such-spec.json"],
                                  ["jobs", "--server", "http://127.0.0.1:1"]])
def test_a_service_command_s_user_error_is_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"metatune {argv[0]}: error:")


@pytest.mark.parametrize("port", ["99999", "0", "-1", "eighty"])
def test_serve_refuses_a_port_outside_1_to_65535_in_one_line(port, capsys):
    """A port past the range used to print the URL and hang; argparse now exits 2 with one line."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--port", port])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--port" in error and "port number" in error and port.lstrip("-") in error


@pytest.mark.parametrize("count", ["0", "65", "-2", "two"])
def test_serve_refuses_a_process_count_outside_1_to_64_in_one_line(count, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--processes", count])
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--processes" in error and count.lstrip("-") in error and "1-64" in error
    assert build_parser().parse_args(["serve", "--processes", "3"]).processes == 3


def test_db_current_on_a_missing_sqlite_file_says_so_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """Reading the revision of a database that is not there used to create an empty file."""
    path = tmp_path / "nowhere.db"
    monkeypatch.setenv("METATUNE_DATABASE_URL", f"sqlite:///{path}")
    assert main(["db", "current"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no database at {path}" in err and "db upgrade" in err
    assert not path.exists()
    assert main(["db", "upgrade"]) == 0 and path.exists()  # upgrade still creates it
    assert main(["db", "current"]) == 0 and "at revision" in capsys.readouterr().out


def test_serve_warns_when_no_token_would_let_anyone_in(tmp_path, monkeypatch):
    """The warning goes out exactly when neither METATUNE_API_TOKENS nor a stored token exists."""
    from metatune_service import cli as service_cli
    from metatune_service import crud
    from metatune_service.core.config import Settings
    from metatune_service.core.db import Database
    from metatune_service.core.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    db = Database(url)
    try:
        def warned(tokens: str) -> bool:
            return service_cli.no_token(db, Settings(database_url=url, api_tokens=tokens))

        assert warned("") and not warned("alice:s3cret")
        token = crud.create_token(db, owner="alice")
        assert not warned("")
        assert crud.owner_of_token(db, token=token) == "alice"
    finally:
        db.dispose()
    assert "METATUNE_API_TOKENS" in service_cli.NO_TOKENS and "token create" in service_cli.NO_TOKENS


def run_cli(argv: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    """The real ``metatune`` command in ``cwd``, with only ``env``'s METATUNE_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METATUNE_")}
    env = {**clean, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "METATUNE_RAY_DIR": str(cwd / "ray"),
           **env}
    command = [sys.executable, "-m", "metatune.cli", *argv]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The one line a configuration error prints (exit code 2, no traceback)."""
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"metatune {command}: error: ")
    return done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("argv, url, says", [
    (["worker"], "garbage", "METATUNE_DATABASE_URL is not a database URL"),
    (["db", "upgrade"], "foo://host/name", "METATUNE_DATABASE_URL is not a database URL"),
    (["serve"], "postgresql://postgres@127.0.0.1:{closed}/test", "Connection refused"),
    (["token", "create", "--owner", "alice"], "sqlite:///{tmp}/no/such/folder/m.db", "the folder"),
    (["db", "current"], "sqlite:///{tmp}/no/such/folder/m.db", "the folder"),
])
def test_a_database_url_that_cannot_be_opened_is_one_line_and_exit_code_two(argv, url, says, tmp_path):
    """A garbage URL, an unknown driver, PostgreSQL on a closed port, a SQLite file in a folder
    that does not exist: one line naming METATUNE_DATABASE_URL, and nothing made on disk (no
    database file or folder, no Ray, no output folder)."""
    url = url.format(closed=free_port(), tmp=tmp_path)
    done = run_cli(argv, tmp_path, METATUNE_DATABASE_URL=url)
    line = one_line_error(done, argv[0])
    assert "METATUNE_DATABASE_URL" in line and says in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["serve"], ["worker"]])
def test_a_setting_that_does_not_parse_is_one_line_naming_its_variable(argv, tmp_path):
    """METATUNE_MAX_GRADIENT_EVALS=abc (a pydantic ValidationError) used to print a traceback;
    nothing is made on disk, not even the default database in the working directory."""
    done = run_cli(argv, tmp_path, METATUNE_MAX_GRADIENT_EVALS="abc")
    line = one_line_error(done, argv[0])
    assert "METATUNE_MAX_GRADIENT_EVALS='abc' is invalid" in line and "number" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_database_newer_than_the_code_is_refused_with_its_own_message(tmp_path):
    """A database at a revision this code does not know (a newer metatune migrated it): every
    command that would use it says so, in one line, and not "run db upgrade" (which cannot
    help); ``db upgrade`` leaves it as it was, ``db current`` shows it."""
    from metatune_service.core.migrations import VERSION_TABLE, head_revision, upgrade

    path = tmp_path / "newer.db"
    upgrade(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'f00dfeedbeef'")
    url = f"sqlite:///{path}"
    for argv in (["serve"], ["worker"], ["db", "upgrade"], ["token", "create", "--owner", "alice"]):
        line = one_line_error(run_cli(argv, tmp_path, METATUNE_DATABASE_URL=url), argv[0])
        assert f"is at revision f00dfeedbeef, newer than this metatune (head {head_revision()})" in line
        assert "upgrade metatune" in line and "db upgrade" not in line
    current = run_cli(["db", "current"], tmp_path, METATUNE_DATABASE_URL=url)
    assert current.returncode == 0
    assert "at revision f00dfeedbeef" in current.stdout and "newer than this metatune" in current.stdout
    with closing(sqlite3.connect(path)) as connection:
        versions = connection.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
        assert versions == [("f00dfeedbeef",)]
        assert connection.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)
    left = {p.name for p in tmp_path.iterdir()}
    assert left <= {"newer.db", "newer.db-wal", "newer.db-shm"}  # no Ray folder, no output folder


def test_tokens_are_listed_without_their_values_and_revoked_by_id_or_owner(tmp_path, monkeypatch, capsys):
    """A revoked token authenticates nothing; the list never shows a token or its hash."""
    from metatune_service import crud
    from metatune_service.core.db import Database

    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    monkeypatch.setenv("METATUNE_DATABASE_URL", url)
    made = {}
    for owner in ("alice", "alice", "bob"):
        assert main(["token", "create", "--owner", owner]) == 0
        made.setdefault(owner, []).append(capsys.readouterr().out.strip())
    assert main(["token", "list"]) == 0
    listing = capsys.readouterr().out
    assert [line.split()[1] for line in listing.splitlines()[1:]] == ["alice", "alice", "bob"]
    assert listing.count("active") == 3 and not any(t in listing for ts in made.values() for t in ts)
    assert not any(crud.hash_token(t)[:12] in listing for ts in made.values() for t in ts)
    assert main(["token", "revoke", "--id", "1"]) == 0 and "revoked 1" in capsys.readouterr().out
    assert main(["token", "revoke", "--id", "1"]) == 0 and "revoked 0" in capsys.readouterr().out
    db = Database(url)
    try:
        assert crud.owner_of_token(db, token=made["alice"][0]) is None
        assert crud.owner_of_token(db, token=made["alice"][1]) == "alice"
        assert main(["token", "revoke", "--owner", "alice"]) == 0 and "revoked 1" in capsys.readouterr().out
        assert crud.owner_of_token(db, token=made["alice"][1]) is None
        assert crud.owner_of_token(db, token=made["bob"][0]) == "bob"
    finally:
        db.dispose()
    assert main(["token", "list", "--owner", "alice"]) == 0
    assert capsys.readouterr().out.count("revoked") == 2
    assert main(["token", "revoke"]) == 2 and "--id N" in capsys.readouterr().err
    assert main(["token", "create"]) == 2 and "--owner" in capsys.readouterr().err
