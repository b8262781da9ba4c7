"""Leases on video jobs, so router replicas sharing one database can each render jobs.

`lease_owner` is the claim that holds an in-progress job (a token per claim, starting with the
replica's name); `lease_expires_at` (unix seconds) is when the job may be taken by another
replica unless the holder renews it. Jobs a release before leases left in progress get an
expired lease, so the first replica to start takes them over, as the old start-up requeue did.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("videos", sa.Column("lease_owner", sa.Text, nullable=True))
    op.add_column("videos", sa.Column("lease_expires_at", sa.Float, nullable=True))
    op.execute("UPDATE videos SET lease_expires_at = 0 WHERE status = 'in_progress'")


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
