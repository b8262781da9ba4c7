"""Reading the ledger: totals grouped by key, model, endpoint or status, and the latest records.

Built from SQLAlchemy expressions over `schema.usage`, so the same code reads a SQLite file or
a PostgreSQL database that several router replicas write to. `query_*` open a connection of
their own and never create anything: `serving usage` on a machine where nothing has run yet
must not leave an empty ledger behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from serving.db.engine import is_sqlite, make_engine, normalize_url, sqlite_path
from serving.ledger.record import FIELDS, FLOAT_SUMS, SUMMED, UsageRecord
from serving.ledger.schema import metadata, usage

# `by` names -> columns.
GROUP_FIELDS: dict[str, str] = {
    "key": "key_name",
    "model": "model",
    "endpoint": "endpoint",
    "status": "status",
}

SQLITE_BUSY_TIMEOUT_S = 5.0
T = TypeVar("T")


class LedgerNotFound(FileNotFoundError):
    """Nothing was ever recorded there: no SQLite file, or no usage table in the database."""


def as_url(where: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a plain path to a SQLite file."""
    if isinstance(where, Path) or "://" not in where:
        return f"sqlite:///{Path(where).expanduser()}"
    return normalize_url(where)


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


def totals(conn: sa.Connection, since: float | None, until: float | None,
           by: Sequence[str]) -> list[dict[str, Any]]:
    """See `Ledger.totals`."""
    groups = check_group_fields(by)
    columns = [usage.c[GROUP_FIELDS[g]] for g in groups]
    errors = sa.func.sum(sa.case((usage.c.status >= 400, 1), else_=0))
    stmt = sa.select(
        *(column.label(g) for g, column in zip(groups, columns, strict=True)),
        sa.func.count().label("requests"),
        sa.func.coalesce(errors, 0).label("errors"),
        *(sa.func.coalesce(sa.func.sum(usage.c[c]), 0).label(c) for c in SUMMED),
    ).select_from(usage)
    if since is not None:
        stmt = stmt.where(usage.c.ts >= float(since))
    if until is not None:
        stmt = stmt.where(usage.c.ts < float(until))
    if groups:
        stmt = stmt.group_by(*columns).order_by(*columns)
    rows = []
    for values in conn.execute(stmt).mappings():
        row = dict(values)
        row["requests"] = int(row["requests"])
        row["errors"] = int(row["errors"])
        for c in SUMMED:
            row[c] = float(row[c]) if c in FLOAT_SUMS else int(row[c])
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        rows.append(row)
    return rows


def records(conn: sa.Connection, since: float | None, limit: int) -> list[UsageRecord]:
    """See `Ledger.records`."""
    latest = sa.select(*(usage.c[name] for name in FIELDS), usage.c.id)
    if since is not None:
        latest = latest.where(usage.c.ts >= float(since))
    latest = latest.order_by(usage.c.ts.desc(), usage.c.id.desc()).limit(int(limit)).subquery()
    stmt = sa.select(*(latest.c[name] for name in FIELDS)).order_by(latest.c.ts, latest.c.id)
    return [UsageRecord(*values) for values in conn.execute(stmt)]


def reader_engine(url: str) -> sa.Engine:
    """An engine that cannot create the ledger: a SQLite file is opened read-only (a missing
    one raises LedgerNotFound), a server database as it is."""
    if not is_sqlite(url):
        return make_engine(url, pool_size=1, create_folder=False)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(f"{url}: an in-memory database has no ledger to read")
    if not path.exists():
        raise LedgerNotFound(f"no usage ledger at {path}")
    uri = path.expanduser().resolve().as_uri() + "?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return conn

    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.NullPool)


def _read(where: str | Path, missing_ok: bool,
          read: Callable[[sa.Connection], T]) -> T:
    url = as_url(where)
    try:
        engine = reader_engine(url)
        try:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table(usage.name):
                    return read(conn)
        finally:
            engine.dispose()
        raise LedgerNotFound(f"no usage table in {display_url(url)}")
    except LedgerNotFound:
        if not missing_ok:
            raise
    empty = sa.create_engine("sqlite://")  # an empty ledger gives the right empty answer
    try:
        metadata.create_all(empty)
        with empty.connect() as conn:
            return read(conn)
    finally:
        empty.dispose()


def query_totals(where: str | Path, since: float | None = None, until: float | None = None,
                 by: Sequence[str] = (), *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Totals from the ledger at `where` (a URL, or a SQLite file's path; see
    `Ledger.totals`). A ledger never written raises LedgerNotFound (a FileNotFoundError), or
    with `missing_ok` counts as an empty one."""
    check_group_fields(by)
    return _read(where, missing_ok, lambda conn: totals(conn, since, until, by))


def display_url(url: str) -> str:
    """`url` for messages: a SQLite file's path, or the URL without its password."""
    if is_sqlite(url) and (path := sqlite_path(url)) is not None:
        return str(path)
    return sa.make_url(url).render_as_string(hide_password=True)


def one_line(error: BaseException) -> str:
    """A database error for a log line or a message: its type and the driver's first line
    (without SQLAlchemy's statement dump and background link)."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
