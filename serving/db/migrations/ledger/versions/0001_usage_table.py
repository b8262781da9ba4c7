"""The usage table as releases before migrations created it (adopted in place if present).

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
    if not inspector.has_table("usage"):
        op.create_table(
            "usage",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("request_id", sa.Text, nullable=False),
            sa.Column("key_name", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("endpoint", sa.Text, nullable=False),
            sa.Column("status", sa.Integer, nullable=False),
            *(sa.Column(name, sa.Integer, nullable=False, server_default="0")
              for name in ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                           "cache_creation_tokens", "images")),
            sa.Column("audio_seconds", sa.Float, nullable=False, server_default="0"),
            sa.Column("characters", sa.Integer, nullable=False, server_default="0"),
            sa.Column("video_seconds", sa.Float, nullable=False, server_default="0"),
            sa.Column("latency_ms", sa.Float, nullable=False, server_default="0"),
        )
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("usage")}
    if "usage_ts" not in indexes:
        op.create_index("usage_ts", "usage", ["ts"])
    if "usage_key_ts" not in indexes:
        op.create_index("usage_key_ts", "usage", ["key_name", "ts"])


def downgrade() -> None:
    op.drop_table("usage")
