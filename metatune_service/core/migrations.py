"""Schema migrations with Alembic: upgrade to head, and the check the service makes on start
(a new database is migrated; one at an older revision, or at a revision this code does not
know because a newer metatune migrated it, is refused with a message saying what to do)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from metatune.errors import UserError

ALEMBIC_DIR = Path(__file__).resolve().parents[1] / "migrations"
"""The Alembic scripts, inside the package: every install (a wheel, an editable one) carries them."""
VERSION_TABLE = "metatune_alembic_version"


class OutdatedDatabase(UserError, RuntimeError):
    """The database holds metatune's tables at an older revision than this code."""


class NewerDatabase(UserError, RuntimeError):
    """The database is at a revision this code does not know: a newer metatune migrated it
    (``metatune db upgrade`` cannot help; only a newer metatune or another database can)."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    return scripts().get_current_head()


def known(revision: str) -> bool:
    """Whether ``revision`` is one of this code's migrations."""
    return any(script.revision == revision for script in scripts().walk_revisions())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def refuse_newer(engine: Engine) -> None:
    """Raise :class:`NewerDatabase` when the database is at a revision this code does not know."""
    current = current_revision(engine)
    if current is not None and not known(current):
        raise NewerDatabase(f"the database at {_shown(engine)} is at revision {current}, newer than this "
                            f"metatune (head {head_revision()}): upgrade metatune, or point "
                            f"METATUNE_DATABASE_URL at another database")


def prepare(engine: Engine, url: str) -> str:
    """Migrate a new, empty database to head; refuse one at an older revision, or at one newer
    than this code (:func:`refuse_newer`). Returns what was done."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return "up to date"
    refuse_newer(engine)
    ours = {"jobs", "trials", "api_tokens"} & set(inspect(engine).get_table_names())
    if current is None and not ours:
        upgrade(url)
        return f"migrated a new database to {head}"
    raise OutdatedDatabase(f"the database at {_shown(engine)} is at revision "
                           f"{current or 'none (unversioned tables)'}, this metatune needs {head}: "
                           f"run `metatune db upgrade` (with the same METATUNE_DATABASE_URL) first")


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
