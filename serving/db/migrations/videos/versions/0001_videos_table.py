"""The videos table as releases before migrations created it (adopted in place if present).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("videos"):
        op.create_table(
            "videos",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("id", sa.Text, nullable=False, unique=True),
            sa.Column("owner", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
            sa.Column("created_at", sa.Integer, nullable=False),
            sa.Column("completed_at", sa.Integer),
            sa.Column("expires_at", sa.Integer),
            sa.Column("size", sa.Text, nullable=False),
            sa.Column("seconds", sa.Text, nullable=False),
            sa.Column("params", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        )
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("videos")}
    if "videos_owner" not in indexes:
        op.create_index("videos_owner", "videos", ["owner", "seq"])
    if "videos_queue" not in indexes:
        op.create_index("videos_queue", "videos", ["model", "status", "seq"])


def downgrade() -> None:
    op.drop_table("videos")
