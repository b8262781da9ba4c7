"""The usage ledger's writer: one row per request, written in batches off the event loop.

`Ledger.append` only puts the record in a bounded in-memory buffer, so the router can call it
from its event loop without ever waiting on the database. One daemon thread writes what the
buffer holds in batches, each in one transaction, at least every `flush_interval_s` (sooner
once a full batch is waiting). Every row carries a unique `event_id` and is inserted with
ON CONFLICT DO NOTHING, so a batch written again (its commit acknowledgement lost with the
connection) is not billed twice.

Database unreachable (PostgreSQL down, a locked or full SQLite file): requests are still
served; their rows stay buffered and the writer retries with backoff (1 s doubling to 30 s;
`flush` retries at once), writing them all when the database returns. The buffer holds at
most `max_buffered` rows: past it the oldest are dropped and counted. Each outage is logged
once when it starts (with what to do), once when the buffer first overflows and once when it
ends, and shows in `state()`, which /ready and /metrics report.

A row the database refuses (a constraint, a value it cannot store) costs only itself: the
batch is retried one row at a time, the refused rows are logged and counted, and the writer
carries on with the rows that follow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from serving.config.deployment import LedgerConfig
from serving.db.engine import database_url, is_sqlite, make_engine, sqlite_path
from serving.db.migrate import migrate
from serving.ledger import queries
from serving.ledger.queries import as_url, check_group_fields, display_url, one_line
from serving.ledger.record import FIELDS, UsageRecord
from serving.ledger.schema import usage

if TYPE_CHECKING:
    from serving.config import Config

log = logging.getLogger(__name__)

BATCH_SIZE = 500
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
RETENTION_EVERY_S = 3600.0
RETENTION_BATCH = 5000


def ledger_path(config: Config) -> Path | None:
    """`config`'s ledger file when it is in SQLite (`router.usage_db` under `state_dir`, or
    `state_dir/usage.db`); None when it is in `router.database`'s server."""
    url = database_url(config, "ledger")
    return sqlite_path(url) if is_sqlite(url) else None


def is_outage(error: BaseException) -> bool:
    """True when `error` says the database cannot take any row now (down, unreachable, locked,
    full), so the same rows are worth retrying later; False when it refused these rows."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, sa.exc.OperationalError | sa.exc.TimeoutError
                      | sa.exc.DisconnectionError)


def _insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"the usage ledger runs on SQLite or PostgreSQL, not {dialect}")
    return insert(usage).on_conflict_do_nothing(index_elements=["event_id"])


def _row(record: UsageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What /ready and /metrics say about the ledger."""

    up: bool  # False from a failed write (or schema upgrade) until a write succeeds
    buffered: int  # rows in memory, not yet in the database
    written: int  # rows the writer has stored (or found already stored) since start
    dropped: int  # oldest rows dropped because the buffer was full
    rejected: int  # rows the database refused
    down_since: float | None  # unix time of the failure that began this outage

    def describe(self) -> str:
        return "ok" if self.up else f"unreachable ({self.buffered} buffered)"


@dataclass(slots=True)
class _Written:
    settled: int  # leading records of the batch written or refused
    written: int
    rejected: list[str] = field(default_factory=list)  # request ids
    outage: Exception | None = None  # what stopped it before the end of the batch


class Ledger:
    """The usage ledger at `where` (a SQLAlchemy URL, or a SQLite file's path; the file and
    its folder are created if need be), upgraded to the newest schema, and its writer thread.

    `append` never blocks; `flush` and `close` do (call them from a thread, or at shutdown).
    `totals` and `records` are safe from any thread (e.g. `asyncio.to_thread`); they see what
    is in the database, so `flush` first to count the rows still buffered.
    """

    def __init__(self, where: str | Path, config: LedgerConfig | None = None, *,
                 batch_size: int = BATCH_SIZE):
        config = config or LedgerConfig()
        self.url = as_url(where)
        self.path = sqlite_path(self.url) if is_sqlite(self.url) else None
        self.where = display_url(self.url)
        self.config = config
        self._batch_size = max(1, min(batch_size, config.max_buffered))
        self._retention_s = (None if config.retention_days is None
                             else config.retention_days * 86400)
        self.engine = make_engine(self.url)
        self._insert = _insert(self.engine.dialect.name)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._wake = threading.Event()
        # (sequence number, record), oldest first; the writer moves a batch to _in_flight.
        self._pending: deque[tuple[int, UsageRecord]] = deque()
        self._in_flight: list[tuple[int, UsageRecord]] = []
        self._appended = 0
        self._written = self._dropped = self._rejected = 0
        self._down_since: float | None = None
        self._retry_s = RETRY_MIN_S
        self._overflow_logged = False
        self._closing = False
        self._migrated = False
        self._next_retention = time.monotonic()
        self._ensure_schema(at_start=True)
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    # --- the router's side -------------------------------------------------------------------

    def append(self, record: UsageRecord) -> None:
        """Buffer `record` for writing. Never blocks; after `close` the record is dropped."""
        if not isinstance(record, UsageRecord):
            raise TypeError(f"expected a UsageRecord, got {type(record).__name__}")
        first_overflow = wake = False
        with self._lock:
            closed = self._closing
            if not closed:
                self._appended += 1
                self._pending.append((self._appended, record))
                over = len(self._pending) + len(self._in_flight) - self.config.max_buffered
                first_overflow = over > 0 and self._drop_oldest(over)
                wake = self._down_since is None and len(self._pending) >= self._batch_size
        if closed:
            log.warning("usage ledger %s is closed: dropped the record of request %s",
                        self.where, record.request_id)
            return
        if first_overflow:
            log.error(
                "usage ledger buffer full (router.ledger.max_buffered=%d rows): dropping the "
                "oldest rows, counted in serving_ledger_dropped_records_total, until %s takes "
                "writes again. Bring the database back, or raise max_buffered to ride out "
                "longer outages (about 500 bytes of memory a row).",
                self.config.max_buffered, self.where)
        if wake and not self._wake.is_set():
            self._wake.set()

    def _drop_oldest(self, n: int) -> bool:
        """Drop the `n` oldest buffered rows (with the lock held); True if this is the first
        overflow since the database was last reachable."""
        for _ in range(n):
            self._pending.popleft()
        self._dropped += n
        self._settled.notify_all()
        first = not self._overflow_logged
        self._overflow_logged = True
        return first

    def _lowest_unsettled(self) -> int:
        if self._in_flight:
            return self._in_flight[0][0]
        if self._pending:
            return self._pending[0][0]
        return self._appended + 1

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write now, and wait until every record appended before this call is written (or
        refused, or dropped). False if that took longer than `timeout` seconds, e.g. while
        the database is unreachable."""
        with self._lock:
            target = self._appended
            if self._lowest_unsettled() > target:
                return True
        if not self._thread.is_alive():
            return False
        self._wake.set()  # at once, even during a backoff
        with self._settled:
            return self._settled.wait_for(lambda: self._lowest_unsettled() > target, timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is buffered, then stop the writer thread. False if it did not finish
        within `timeout` seconds (it goes on trying in the background, as a daemon thread,
        and the rows are lost if the process exits first)."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage ledger: %d rows could not be written to %s before shutdown "
                      "(it is unreachable); they are lost if the process exits now",
                      self.state().buffered, self.where)
            return False
        return True

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> LedgerState:
        with self._lock:
            return LedgerState(
                up=self._down_since is None, buffered=len(self._pending) + len(self._in_flight),
                written=self._written, dropped=self._dropped, rejected=self._rejected,
                down_since=self._down_since)

    # --- reading -----------------------------------------------------------------------------

    def totals(self, since: float | None = None, until: float | None = None,
               by: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Sums over the records with `since <= ts < until` (either bound optional), one dict
        per group of `by` (any of "key", "model", "endpoint", "status"), ordered by group.

        Each dict has the group fields under those names, then `requests`, `errors` (status
        >= 400), the sum of every usage column (`prompt_tokens`, `completion_tokens`,
        `cache_read_tokens`, `cache_creation_tokens`, `images`, `audio_seconds`,
        `characters`, `video_seconds`) and `total_tokens` (prompt + completion). With no
        `by`, a single row of grand totals (zeros when nothing matches). Raises SQLAlchemy's
        errors when the database is unreachable.
        """
        check_group_fields(by)
        with self.engine.connect() as conn:
            return queries.totals(conn, since, until, by)

    def records(self, since: float | None = None, limit: int = 100) -> list[UsageRecord]:
        """The latest `limit` records written (at or after `since`), oldest first."""
        with self.engine.connect() as conn:
            return queries.records(conn, since, limit)

    def delete_older_than(self, cutoff: float, batch: int = RETENTION_BATCH) -> int:
        """Delete the rows with `ts < cutoff`, `batch` rows a transaction (so neither the
        writer nor another replica waits long on a big first cleanup); how many went."""
        total = 0
        while True:
            ids = sa.select(usage.c.id).where(usage.c.ts < cutoff).limit(batch)
            with self.engine.begin() as conn:
                n = conn.execute(sa.delete(usage).where(usage.c.id.in_(ids.scalar_subquery())))
            total += n.rowcount
            if n.rowcount < batch:
                return total

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                wait = self._retry_s if self._down_since is not None else None
            self._wake.wait(wait or self.config.flush_interval_s)
            self._wake.clear()
            with self._lock:
                closing = self._closing
            if self._ensure_schema() and self._drain():
                self._retention_if_due()
            with self._lock:
                if closing and not self._pending:
                    break
        self.engine.dispose()

    def _ensure_schema(self, at_start: bool = False) -> bool:
        """Upgrade the schema once. A database unreachable at start does not stop the router:
        the upgrade is retried before the first write, like a write."""
        if self._migrated:
            return True
        try:
            migrate(self.engine, "ledger")
        except Exception as e:
            if at_start and not is_outage(e):
                raise
            self._failed(e, "upgrading its schema")
            return False
        self._migrated = True
        return True

    def _drain(self) -> bool:
        """Write everything buffered; False if the database became unreachable."""
        recovered: tuple[float, int] | None = None
        while True:
            with self._lock:
                if not self._pending:
                    break
                self._in_flight = [self._pending.popleft()
                                   for _ in range(min(self._batch_size, len(self._pending)))]
                batch = [record for _, record in self._in_flight]
            result = self._write(batch)
            with self._lock:
                unwritten = self._in_flight[result.settled:]
                self._in_flight = []
                self._pending.extendleft(reversed(unwritten))
                self._written += result.written
                self._rejected += len(result.rejected)
                if result.outage is None and self._down_since is not None:
                    recovered = (self._down_since, len(self._pending) + len(batch))
                    self._down_since = None
                    self._retry_s = RETRY_MIN_S
                    self._overflow_logged = False
                self._settled.notify_all()
            if result.rejected:
                shown = ", ".join(result.rejected[:5]) + (", ..." if len(result.rejected) > 5
                                                          else "")
                log.error("usage ledger %s refused %d of %d rows (requests %s); they are not "
                          "recorded", self.where, len(result.rejected), len(batch), shown)
            if result.outage is not None:
                self._failed(result.outage, f"writing {len(batch)} rows")
                return False
        if recovered is not None:
            since, n = recovered
            log.warning("usage ledger database %s back after %.0f s; wrote %d buffered rows "
                        "(%d dropped in all since start)", self.where, time.time() - since, n,
                        self.state().dropped)
        return True

    def _failed(self, error: Exception, doing: str) -> None:
        """Enter (or stay in) an outage: back off, and log only its start."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.time()
                self._retry_s = RETRY_MIN_S
            else:
                self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
            buffered = len(self._pending) + len(self._in_flight)
        if first:
            log.error(
                "usage ledger database %s unreachable while %s: %s (%d rows buffered; will "
                "retry every %g-%g s). Requests are still served. Check that the database is "
                "up and reachable; up to router.ledger.max_buffered=%d rows are kept, then the "
                "oldest are dropped.", self.where, doing, one_line(error), buffered,
                RETRY_MIN_S, RETRY_MAX_S, self.config.max_buffered)
        else:
            log.debug("usage ledger %s still unreachable: %s", self.where, one_line(error))

    def _write(self, batch: list[UsageRecord]) -> _Written:
        """Insert `batch` in one transaction, or one row at a time if the database refuses
        some row of it."""
        try:
            with self.engine.begin() as conn:
                conn.execute(self._insert, [_row(r) for r in batch])
            return _Written(settled=len(batch), written=len(batch))
        except Exception as e:
            if is_outage(e):
                return _Written(settled=0, written=0, outage=e)
            log.warning("usage ledger %s: writing %d rows failed (%s); retrying one by one",
                        self.where, len(batch), one_line(e))
        result = _Written(settled=0, written=0)
        for record in batch:
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._insert, [_row(record)])
                result.written += 1
            except Exception as e:
                if is_outage(e):
                    result.outage = e
                    return result
                log.debug("usage ledger row of request %s refused: %s", record.request_id, e)
                result.rejected.append(str(record.request_id))
            result.settled += 1
        return result

    def _retention_if_due(self) -> None:
        if self._retention_s is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + RETENTION_EVERY_S
        try:
            n = self.delete_older_than(time.time() - self._retention_s)
        except Exception as e:
            log.warning("usage ledger %s: deleting rows older than %g days failed (%s); "
                        "trying again in an hour", self.where, self.config.retention_days,
                        one_line(e))
            return
        if n:
            log.info("usage ledger %s: deleted %d rows older than %g days", self.where, n,
                     self.config.retention_days)

