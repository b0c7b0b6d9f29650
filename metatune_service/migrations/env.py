"""Alembic environment: the service's models, its own version table (the database may be
shared with Optuna or MLflow), and batch mode on SQLite (ALTER TABLE is limited there)."""

from __future__ import annotations

from alembic import context
from metatune_service.core.db import make_engine, normalise_url
from metatune_service.models import Base

VERSION_TABLE = "metatune_alembic_version"

config = context.config


def run_migrations() -> None:
    url = normalise_url(config.get_main_option("sqlalchemy.url"))
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:  # noqa: ANN001
    if connection.dialect.name == "sqlite" and not connection.in_transaction():
        # batch mode recreates a table by DROP and rename: with foreign keys on, dropping `trials`
        # would cascade to its metrics (the pragma is a no-op inside a transaction)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
