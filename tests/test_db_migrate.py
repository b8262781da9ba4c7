"""Schema migrations: every store upgrades from nothing and from the pre-migration schema, on
SQLite and on a real PostgreSQL, and a second run changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.db import make_engine, migrate
from serving.db.migrate import MIGRATIONS

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


def current_revision(engine: sa.Engine, store: str) -> str | None:
    """The revision `store`'s tables are at, as Alembic recorded it."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": f"alembic_version_{store}"})
        return context.get_current_revision()


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


def test_a_ledger_from_the_last_release_upgrades_with_its_rows_and_keeps_taking_writes(
        tmp_path: Path):
    from serving.ledger import Ledger, UsageRecord

    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path)
    conn.executescript(PRE_MIGRATION_LEDGER)
    old = [(1.5 + i, f"req_{i}", "alice" if i % 2 else "bob", "m", "/v1/chat/completions",
            200 if i % 3 else 429, i, 2 * i, 0.25 * i) for i in range(40)]
    conn.executemany("INSERT INTO usage (ts, request_id, key_name, model, endpoint, status, "
                     "prompt_tokens, completion_tokens, audio_seconds) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", old)
    conn.commit()
    conn.close()
    with Ledger(path) as ledger:  # as the router opens it after the upgrade
        assert current_revision(ledger.engine, "ledger") == _head("ledger")
        records = ledger.records(limit=100)
        assert [(r.ts, r.request_id, r.key_name, r.model, r.endpoint, r.status,
                 r.prompt_tokens, r.completion_tokens, r.audio_seconds) for r in records] == old
        assert len({r.event_id for r in records}) == 40  # each old row an event of its own
        (total,) = ledger.totals()
        assert (total["requests"], total["errors"], total["prompt_tokens"]) == (
            40, 14, sum(range(40)))
        new = UsageRecord(ts=100.0, request_id="req_new", key_name="alice", model="m",
                          endpoint="/v1/chat/completions", status=200, prompt_tokens=5)
        ledger.append(new)
        ledger.append(new)  # written twice, billed once
        assert ledger.flush()
        by_key = {row["key"]: row["requests"] for row in ledger.totals(by=["key"])}
        assert by_key == {"alice": 21, "bob": 20}
