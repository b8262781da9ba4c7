"""The `usage` table as SQLAlchemy Core sees it, for inserts and queries.

Alembic owns the schema (serving/db/migrations/ledger); this mirrors its newest revision so
statements are built from columns, never from formatted strings.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
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
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Index("usage_ts", "ts"),
    sa.Index("usage_key_ts", "key_name", "ts"),
    sa.Index("usage_event_id", "event_id", unique=True),
)
