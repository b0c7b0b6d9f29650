"""per-group hyperparameters: trials and metagrad steps hold η, β (and ∂ℓ/∂η, ∂ℓ/∂β) per group

Upgrade: ``lr`` and ``momentum`` of ``trials`` and ``metagrad_steps`` may be NULL, and nullable
JSON columns ``lr_groups``, ``momentum_groups`` (and on ``metagrad_steps``
``dvalue_dlr_groups``, ``dvalue_dmomentum_groups``) hold ``{prefix: value}`` for a per-group
row, whose scalar columns are NULL. Every existing row is a scalar one and keeps its values.

Downgrade: revision 0001 cannot hold a per-group value, so the jobs and comparisons whose
spec has ``space.groups`` are deleted with their trials, metrics and steps (an older server
would otherwise run or show them as scalar ones); every other row is kept.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

HYPER = {"trials": ("lr", "momentum"), "metagrad_steps": ("lr", "momentum", "dvalue_dlr", "dvalue_dmomentum")}
"""Per table, the columns that gain a ``<name>_groups`` twin."""

NOT_NULL = ("lr", "momentum")
"""Columns that were NOT NULL in 0001 (the derivatives were nullable already)."""


def upgrade() -> None:
    for table, names in HYPER.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in NOT_NULL:
                batch_op.alter_column(name, existing_type=sa.Float(), nullable=True)
            for name in names:
                batch_op.add_column(sa.Column(f"{name}_groups", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    _delete_per_group_rows()
    for table, names in HYPER.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in reversed(names):
                batch_op.drop_column(f"{name}_groups")
            for name in NOT_NULL:
                batch_op.alter_column(name, existing_type=sa.Float(), nullable=False)


def _per_group(spec: Any) -> bool:
    """Whether a stored job or comparison spec asks for a per-group space."""
    return isinstance(spec, dict) and isinstance(spec.get("space"), dict) and spec["space"].get("groups") is not None


def _delete_per_group_rows() -> None:
    """Delete per-group jobs (their trials, metrics, steps) and comparisons, children first
    (SQLite runs migrations with foreign keys off: no cascades)."""
    bind = op.get_bind()
    jobs = sa.table("jobs", sa.column("id"), sa.column("spec", sa.JSON()))
    comparisons = sa.table("comparisons", sa.column("id"), sa.column("spec", sa.JSON()))
    trials = sa.table("trials", sa.column("id"), sa.column("job_id"))
    metrics = sa.table("trial_metrics", sa.column("trial_id"))
    steps = sa.table("metagrad_steps", sa.column("job_id"))
    job_ids = [row.id for row in bind.execute(sa.select(jobs.c.id, jobs.c.spec)) if _per_group(row.spec)]
    comparison_ids = [row.id for row in bind.execute(sa.select(comparisons.c.id, comparisons.c.spec))
                      if _per_group(row.spec)]
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        trial_ids = sa.select(trials.c.id).where(trials.c.job_id.in_(chunk)).scalar_subquery()
        bind.execute(sa.delete(metrics).where(metrics.c.trial_id.in_(trial_ids)))
        bind.execute(sa.delete(trials).where(trials.c.job_id.in_(chunk)))
        bind.execute(sa.delete(steps).where(steps.c.job_id.in_(chunk)))
        bind.execute(sa.delete(jobs).where(jobs.c.id.in_(chunk)))
    for start in range(0, len(comparison_ids), 500):  # their jobs share their spec: deleted above
        bind.execute(sa.delete(comparisons).where(comparisons.c.id.in_(comparison_ids[start:start + 500])))
