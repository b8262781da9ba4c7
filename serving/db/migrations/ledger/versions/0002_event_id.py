"""Every usage row gets an `event_id`, unique, so a batch written twice is billed once.

Rows from before it get `legacy-<id>`. On PostgreSQL `id` also becomes a bigint, so a busy
ledger cannot run out of ids (SQLite's are 64-bit already).

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
    op.add_column("usage", sa.Column("event_id", sa.Text, nullable=True))
    usage = sa.table("usage", sa.column("id", sa.Integer), sa.column("event_id", sa.Text))
    op.execute(usage.update().where(usage.c.event_id.is_(None))
               .values(event_id=sa.literal("legacy-") + sa.cast(usage.c.id, sa.Text)))
    with op.batch_alter_table("usage") as batch:
        batch.alter_column("event_id", existing_type=sa.Text, nullable=False)
        if op.get_bind().dialect.name == "postgresql":
            batch.alter_column("id", existing_type=sa.Integer, type_=sa.BigInteger)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER SEQUENCE IF EXISTS usage_id_seq AS bigint")
    op.create_index("usage_event_id", "usage", ["event_id"], unique=True)


def downgrade() -> None:
    op.drop_index("usage_event_id", table_name="usage")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("event_id")
