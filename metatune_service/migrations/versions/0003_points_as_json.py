"""points as JSON: trials and metagrad steps store their point (and meta-gradient) in its JSON form

A point may now be a schedule (K knots of η and β per group, or the warm-up + cosine family),
which neither the float columns nor the per-group ``{prefix: value}`` columns of 0002 can hold.

Upgrade: ``trials`` and ``metagrad_steps`` gain ``point`` (JSON, NOT NULL):
``Point.to_json()``, ``{"lr": …, "momentum": …}`` with floats, lists of knot values or
``{prefix: …}`` of those, and ``"schedule"`` for a fixed shape; ``metagrad_steps`` gains
``meta_gradient`` (JSON, NOT NULL): ``{"lr": ∂ℓ/∂η, "momentum": ∂ℓ/∂β}`` in the same form
(null where not finite). Both are filled from the columns of 0002, which are then dropped
(``*_groups``) or kept as sort keys (``lr``, ``momentum``, ``dvalue_dlr``,
``dvalue_dmomentum``: the first knot's value for a point without groups, NULL per group;
every existing row already holds that).

Downgrade: revision 0002 cannot hold a schedule, so the jobs and comparisons whose spec has a
schedule other than one constant (η, β) (and any job with a trial whose point is not
constant) are deleted with their trials, metrics and steps; every other row gets its
``*_groups`` columns back from its point.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

PAGE = 1000
"""Rows read and rewritten per statement while filling a column."""

JSON_COLUMNS = {"trials": ("point",), "metagrad_steps": ("point", "meta_gradient")}
"""Per table, the JSON columns of this revision."""

GROUP_COLUMNS = {"trials": ("lr", "momentum"), "metagrad_steps": ("lr", "momentum", "dvalue_dlr", "dvalue_dmomentum")}
"""Per table, the columns of 0002 with a ``<name>_groups`` twin."""

JSON_FROM = {"point": ("lr", "momentum"), "meta_gradient": ("dvalue_dlr", "dvalue_dmomentum")}
"""Each JSON column's two entries ``lr`` and ``momentum``, and the 0002 columns they come from."""


def upgrade() -> None:
    for table, columns in JSON_COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.add_column(sa.Column(column, sa.JSON(), nullable=True))
        _fill_json(table, columns)
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(column, existing_type=sa.JSON(), nullable=False)
            for name in reversed(GROUP_COLUMNS[table]):
                batch_op.drop_column(f"{name}_groups")


def downgrade() -> None:
    _delete_scheduled_rows()
    for table, names in GROUP_COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in names:
                batch_op.add_column(sa.Column(f"{name}_groups", sa.JSON(none_as_null=True), nullable=True))
        _fill_groups(table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in reversed(JSON_COLUMNS[table]):
                batch_op.drop_column(column)


def _pages(bind: sa.Connection, table: sa.TableClause) -> Iterator[list[sa.Row]]:
    """The table's rows, ``PAGE`` at a time by ascending id (keyset pagination: the rows may be
    rewritten between pages)."""
    last = None
    while True:
        query = sa.select(table).order_by(table.c.id).limit(PAGE)
        rows = bind.execute(query if last is None else query.where(table.c.id > last)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _fill_json(table: str, columns: tuple[str, ...]) -> None:
    """Each row's JSON ``columns`` from its 0002 columns: ``<name>_groups`` where not NULL (a
    per-group row), else ``<name>``."""
    sources = [name for column in columns for name in JSON_FROM[column]]
    rows_of = sa.table(table, sa.column("id"), *(sa.column(n) for n in sources),
                       *(sa.column(f"{n}_groups", sa.JSON()) for n in sources))
    target = sa.table(table, sa.column("id"), *(sa.column(c, sa.JSON()) for c in columns))
    change = (sa.update(target).where(target.c.id == sa.bindparam("row_id"))
              .values({c: sa.bindparam(f"new_{c}") for c in columns}))
    bind = op.get_bind()
    for rows in _pages(bind, rows_of):
        values = []
        for row in rows:
            one = {"row_id": row.id}
            for column in columns:
                lr, momentum = (_hyper(row, name) for name in JSON_FROM[column])
                one[f"new_{column}"] = {"lr": lr, "momentum": momentum}
            values.append(one)
        bind.execute(change, values)


def _hyper(row: sa.Row, name: str) -> Any:
    groups = getattr(row, f"{name}_groups")
    return groups if groups is not None else getattr(row, name)


def _fill_groups(table: str) -> None:
    """Each per-group row's ``<name>_groups`` from its JSON columns (the dicts by prefix; only
    constant points are left, so every value is a float or null)."""
    columns = JSON_COLUMNS[table]
    rows_of = sa.table(table, sa.column("id"), *(sa.column(c, sa.JSON()) for c in columns))
    names = [name for column in columns for name in JSON_FROM[column]]
    target = sa.table(table, sa.column("id"), *(sa.column(f"{n}_groups", sa.JSON(none_as_null=True)) for n in names))
    change = (sa.update(target).where(target.c.id == sa.bindparam("row_id"))
              .values({f"{n}_groups": sa.bindparam(f"new_{n}") for n in names}))
    bind = op.get_bind()
    for rows in _pages(bind, rows_of):
        values = []
        for row in rows:
            entries = {name: getattr(row, column)[key] for column in columns
                       for name, key in zip(JSON_FROM[column], ("lr", "momentum"))}
            if any(isinstance(v, dict) for v in entries.values()):
                values.append({"row_id": row.id, **{f"new_{n}": v if isinstance(v, dict) else None
                                                    for n, v in entries.items()}})
        if values:
            bind.execute(change, values)


def _scheduled(spec: Any) -> bool:
    """Whether a stored job or comparison spec asks for a schedule (anything but one constant
    (η, β): ``{"knots": K > 1}`` or a shape)."""
    space = spec.get("space") if isinstance(spec, dict) else None
    schedule = space.get("schedule") if isinstance(space, dict) else None
    if not isinstance(schedule, dict):
        return False
    return schedule.get("shape") not in (None, "knots") or schedule.get("knots") not in (None, 1)


def _constant(point: Any) -> bool:
    """Whether a stored point is one (η, β), or one per group: 0002 can hold it."""
    values = [point.get("lr"), point.get("momentum")]
    values += [v for d in values if isinstance(d, dict) for v in d.values()]
    return "schedule" not in point and not any(isinstance(v, list) for v in values)


def _delete_scheduled_rows() -> None:
    """Delete the jobs (their trials, metrics, steps) and comparisons that have a schedule,
    children first (SQLite runs migrations with foreign keys off: no cascades)."""
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id"), sa.column("spec", sa.JSON()))
    comparisons = sa.table("comparisons", sa.column("id"), sa.column("spec", sa.JSON()))
    trials = sa.table("trials", sa.column("id"), sa.column("job_id"), sa.column("point", sa.JSON()))
    metrics = sa.table("trial_metrics", sa.column("trial_id"))
    steps = sa.table("metagrad_steps", sa.column("job_id"))
    job_ids = {row.id for row in bind.execute(sa.select(jobs.c.id, jobs.c.spec)) if _scheduled(row.spec)}
    for rows in _pages(bind, trials):
        job_ids.update(row.job_id for row in rows if not _constant(row.point))
    comparison_ids = [row.id for row in bind.execute(sa.select(comparisons.c.id, comparisons.c.spec))
                      if _scheduled(row.spec)]
    ordered = sorted(job_ids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start:start + 500]
        trial_ids = sa.select(trials.c.id).where(trials.c.job_id.in_(chunk)).scalar_subquery()
        bind.execute(sa.delete(metrics).where(metrics.c.trial_id.in_(trial_ids)))
        bind.execute(sa.delete(trials).where(trials.c.job_id.in_(chunk)))
        bind.execute(sa.delete(steps).where(steps.c.job_id.in_(chunk)))
        bind.execute(sa.delete(jobs).where(jobs.c.id.in_(chunk)))
    for start in range(0, len(comparison_ids), 500):  # their jobs share their schedule: deleted above
        bind.execute(sa.delete(comparisons).where(comparisons.c.id.in_(comparison_ids[start:start + 500])))
