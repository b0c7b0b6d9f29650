"""trial node: the Ray node that evaluated a trial

Upgrade: ``trials`` gains ``node`` (VARCHAR(64), NULL: the trial ran in-process, or was
recorded before this revision), the hex id of the Ray node that evaluated it
(:attr:`metatune.tuners.records.Trial.node`). Every existing row gets NULL.

Downgrade: the column is dropped; every row is kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_column("node")
