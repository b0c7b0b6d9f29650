"""Schema migrations with Alembic: upgrade to head, and the check the service makes on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from metatune.errors import UserError

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"
VERSION_TABLE = "metatune_alembic_version"


class OutdatedDatabase(UserError, RuntimeError):
    """The database holds metatune's tables at an older revision than this code."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def prepare(engine: Engine, url: str) -> str:
    """Migrate a new, empty database to head; refuse one at an older revision. Returns what was done."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return "up to date"
    ours = {"jobs", "trials", "api_tokens"} & set(inspect(engine).get_table_names())
    if current is None and not ours:
        upgrade(url)
        return f"migrated a new database to {head}"
    raise OutdatedDatabase(f"the database at {engine.url.render_as_string(hide_password=True)} is at revision "
                           f"{current or 'none (unversioned tables)'}, this metatune needs {head}: "
                           f"run `metatune db upgrade` (with the same METATUNE_DATABASE_URL) first")
