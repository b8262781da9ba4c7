"""Schema migrations: every store upgrades from nothing and from the pre-migration schema, on
SQLite and on a real PostgreSQL, and a second run changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.db import make_engine, migrate
from serving.db.migrate import MIGRATIONS, current_revision

# What the last release before migrations created (serving/ledger/store.py and
# serving/video_jobs/store.py at that time), frozen here.
PRE_MIGRATION_LEDGER = """CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    audio_seconds REAL NOT NULL DEFAULT 0,
    characters INTEGER NOT NULL DEFAULT 0,
    video_seconds REAL NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_name, ts);
"""
PRE_MIGRATION_VIDEOS = """CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    expires_at INTEGER,
    size TEXT NOT NULL,
    seconds TEXT NOT NULL,
    params TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS videos_owner ON videos (owner, seq);
CREATE INDEX IF NOT EXISTS videos_queue ON videos (model, status, seq);
"""


def _head(store: str) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS / store)).get_current_head()


@pytest.mark.parametrize("store", ["ledger", "videos"])
def test_fresh_sqlite_and_postgres_reach_head(store: str, tmp_path: Path, postgres_url: str):
    for url in (f"sqlite:///{tmp_path / 'fresh.db'}", postgres_url):
        engine = make_engine(url)
        migrate(engine, store)
        migrate(engine, store)  # a second start finds nothing to do
        assert current_revision(engine, store) == _head(store)
        assert sa.inspect(engine).has_table("usage" if store == "ledger" else "videos")
        engine.dispose()


@pytest.mark.parametrize(("store", "schema", "row"), [
    ("ledger", PRE_MIGRATION_LEDGER,
     "INSERT INTO usage (ts, request_id, key_name, model, endpoint, status, prompt_tokens) "
     "VALUES (1.5, 'req_1', 'alice', 'm', '/v1/chat/completions', 200, 7)"),
    ("videos", PRE_MIGRATION_VIDEOS,
     "INSERT INTO videos (id, owner, model, status, created_at, size, seconds, params) "
     "VALUES ('video_1', 'o', 'm', 'completed', 1, '128x128', '1', '{}')"),
])
def test_a_pre_migration_sqlite_file_is_adopted_in_place(store: str, schema: str, row: str,
                                                         tmp_path: Path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute(row)
    conn.commit()
    conn.close()
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine, store)
    assert current_revision(engine, store) == _head(store)
    table = "usage" if store == "ledger" else "videos"
    with engine.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar() == 1
    engine.dispose()
