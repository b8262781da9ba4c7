"""The usage ledger: one SQLite row per request, written off the event loop.

`Ledger.append` only puts the record on a queue, so the router can call it from its event
loop without ever waiting on the disk. One daemon thread drains the queue and inserts what it
finds in a single transaction (many records per commit under load). The database is in WAL
mode with synchronous=NORMAL: a crash of the process loses nothing committed, a power cut at
most the last few commits, and readers (the CLI, `/v1/usage`) never block the writer.

A failed write is logged and the batch is retried one record at a time, so one bad record or
a passing error (a locked database, a full disk that gets freed) costs only what could not be
written; the thread carries on with the records that follow.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.ledger.record import FIELDS, FLOAT_SUMS, SUMMED, UsageRecord

if TYPE_CHECKING:
    from serving.config import Config

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
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

INSERT = (f"INSERT INTO usage ({', '.join(FIELDS)}) "
          f"VALUES ({', '.join('?' for _ in FIELDS)})")

# `by` names -> columns. Only these strings ever reach the SQL text.
GROUP_FIELDS: dict[str, str] = {
    "key": "key_name",
    "model": "model",
    "endpoint": "endpoint",
    "status": "status",
}

BUSY_TIMEOUT_S = 5.0
_STOP = object()


def ledger_path(config: Config) -> Path:
    """Where `config`'s ledger lives: `router.usage_db` (relative to `state_dir`), or
    `state_dir/usage.db`."""
    if config.router.usage_db is None:
        return config.state_dir / "usage.db"
    return config.state_dir / config.router.usage_db.expanduser()


def _row(record: UsageRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in FIELDS)


def _open_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _init_db(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("usage ledger %s: WAL mode unavailable here (journal_mode=%s)",
                        path, mode)
        with conn:
            conn.executescript(SCHEMA)
    finally:
        conn.close()


def _open_reader(path: Path) -> sqlite3.Connection:
    """A connection of the caller's own, that cannot create the file nor write to it."""
    uri = path.expanduser().resolve().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.OperationalError:
        if not path.exists():
            raise FileNotFoundError(f"no usage ledger at {path}") from None
        raise
    conn.execute("PRAGMA query_only=ON")
    return conn


def check_group_fields(by: Sequence[str]) -> tuple[str, ...]:
    """`by` as a tuple without repeats, or a ValueError naming the unknown field."""
    if isinstance(by, str):
        raise ValueError("`by` is a sequence of field names, not a string")
    out: list[str] = []
    for name in by:
        if name not in GROUP_FIELDS:
            raise ValueError(f"cannot group by {name!r}: choose from "
                             f"{', '.join(GROUP_FIELDS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _totals(conn: sqlite3.Connection, since: float | None, until: float | None,
            by: Sequence[str]) -> list[dict[str, Any]]:
    groups = check_group_fields(by)
    select = [f'{GROUP_FIELDS[g]} AS "{g}"' for g in groups]
    select += ['COUNT(*) AS "requests"',
               'COALESCE(SUM(status >= 400), 0) AS "errors"']
    select += [f'COALESCE(SUM({c}), 0) AS "{c}"' for c in SUMMED]
    where: list[str] = []
    params: list[float] = []
    if since is not None:
        where.append("ts >= ?")
        params.append(float(since))
    if until is not None:
        where.append("ts < ?")
        params.append(float(until))
    sql = f"SELECT {', '.join(select)} FROM usage"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if groups:
        columns = ", ".join(GROUP_FIELDS[g] for g in groups)
        sql += f" GROUP BY {columns} ORDER BY {columns}"
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    rows = []
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        for c in SUMMED:
            row[c] = float(row[c]) if c in FLOAT_SUMS else int(row[c])
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        rows.append(row)
    return rows


def query_totals(path: Path, since: float | None = None, until: float | None = None,
                 by: Sequence[str] = (), *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Totals from the ledger file at `path` (see `Ledger.totals`). A missing file raises
    FileNotFoundError, or with `missing_ok` counts as an empty ledger."""
    check_group_fields(by)
    if missing_ok and not Path(path).exists():
        conn = sqlite3.connect(":memory:")
        conn.executescript(SCHEMA)
    else:
        conn = _open_reader(Path(path))
    try:
        return _totals(conn, since, until, by)
    finally:
        conn.close()


def query_records(path: Path, since: float | None = None,
                  limit: int = 100) -> list[UsageRecord]:
    """The latest `limit` records (at or after `since`), oldest first."""
    where, params = ("WHERE ts >= ?", [float(since)]) if since is not None else ("", [])
    sql = (f"SELECT {', '.join(FIELDS)} FROM (SELECT * FROM usage {where} "
           "ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id")
    conn = _open_reader(Path(path))
    try:
        return [UsageRecord(*values) for values in conn.execute(sql, [*params, int(limit)])]
    finally:
        conn.close()


class Ledger:
    """The usage ledger at `path` (created with its folder if need be), and its writer thread.

    `append` never blocks; `flush` and `close` do (call them from a thread, or at shutdown).
    `totals` and `records` open a connection of their own per call, so they are safe from
    any thread (e.g. `asyncio.to_thread`); they see what is on disk, so `flush` first to count
    the records still queued.
    """

    def __init__(self, path: Path | str, *, batch_size: int = 500):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _init_db(self.path)
        self._batch_size = max(1, batch_size)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    # --- the router's side -------------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        """Queue `record` for writing. Never blocks; after `close` the record is dropped."""
        if not isinstance(record, UsageRecord):
            raise TypeError(f"expected a UsageRecord, got {type(record).__name__}")
        if self._closed:
            log.warning("usage ledger %s is closed: dropped the record of request %s",
                        self.path, record.request_id)
            return
        self._queue.put(record)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every record appended before this call is written (or failed and was
        logged). False if that took longer than `timeout` seconds."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued, then stop the writer thread. False if it did not finish
        within `timeout` seconds (it goes on in the background, as a daemon thread)."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------------

    def totals(self, since: float | None = None, until: float | None = None,
               by: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Sums over the records with `since <= ts < until` (either bound optional), one dict
        per group of `by` (any of "key", "model", "endpoint", "status"), ordered by group.

        Each dict has the group fields under those names, then `requests`, `errors` (status
        >= 400), the sum of every usage column (`prompt_tokens`, `completion_tokens`,
        `cache_read_tokens`, `cache_creation_tokens`, `images`, `audio_seconds`,
        `characters`, `video_seconds`) and `total_tokens` (prompt + completion). With no
        `by`, a single row of grand totals (zeros when nothing matches).
        """
        return query_totals(self.path, since, until, by)

    def records(self, since: float | None = None, limit: int = 100) -> list[UsageRecord]:
        """The latest `limit` records written (at or after `since`), oldest first."""
        return query_records(self.path, since, limit)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[UsageRecord] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True  # and write whatever is still queued
                elif isinstance(item, threading.Event):
                    self._write(batch)
                    batch = []
                    item.set()
                else:
                    batch.append(item)
                    if len(batch) >= self._batch_size:
                        self._write(batch)
                        batch = []
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
        self._disconnect()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _open_writer(self.path)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.exception("usage ledger %s: closing the connection failed", self.path)
            self._conn = None

    def _write(self, batch: list[UsageRecord]) -> None:
        if not batch:
            return
        try:
            conn = self._connection()
            with conn:
                conn.executemany(INSERT, [_row(r) for r in batch])
            return
        except Exception:
            log.exception("usage ledger %s: writing %d records failed; retrying one by one",
                          self.path, len(batch))
            self._disconnect()  # a fresh connection, in case this one is what broke
        dropped: list[str] = []
        first_error: Exception | None = None
        for record in batch:
            try:
                conn = self._connection()
                with conn:
                    conn.execute(INSERT, _row(record))
            except Exception as e:
                dropped.append(record.request_id)
                first_error = first_error or e
        if dropped:
            self._disconnect()
            shown = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
            log.error("usage ledger %s: dropped %d of %d records (requests %s): %s",
                      self.path, len(dropped), len(batch), shown, first_error)
