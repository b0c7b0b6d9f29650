"""idempotency keys (a retried submission returns the job or comparison it made the first time),
and an index for an owner's newest jobs

Upgrade: ``jobs`` and ``comparisons`` gain ``idempotency_key`` (VARCHAR(200), NULL: submitted
without one) and ``request_hash`` (VARCHAR(64): the SHA-256 of the normalised request, which a
reuse of the key must match), with a unique constraint on ``(owner, idempotency_key)``: of two
submissions racing with one key, the database stores one and refuses the other (NULL keys
never collide). Every existing row gets NULL in both. ``jobs`` gains the index
``ix_jobs_owner_created`` on ``(owner, created_at)``: a page of an owner's newest jobs reads
its rows from the index instead of sorting all of the owner's jobs.

Downgrade: the index, the columns and the constraints are dropped; every row is kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

TABLES = ("jobs", "comparisons")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
            batch_op.create_unique_constraint(f"uq_{table}_owner_idempotency_key", ["owner", "idempotency_key"])
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_created", table_name="jobs")
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"uq_{table}_owner_idempotency_key", type_="unique")
            batch_op.drop_column("request_hash")
            batch_op.drop_column("idempotency_key")
