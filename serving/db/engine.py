"""SQLAlchemy engines for `router.database`: SQLite files by default, or PostgreSQL.

SQLite connections get WAL (readers never block the writer) and synchronous=NORMAL (a crash of
the process loses nothing committed); PostgreSQL connections are checked before use, so a
database that restarted costs one reconnect instead of an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa

if TYPE_CHECKING:
    from serving.config import Config

Store = Literal["ledger", "videos"]

SQLITE_BUSY_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 5
# libpq settings so a server that vanishes from the network (no RST, e.g. a failed-over host)
# breaks a connection within about 30 s instead of the kernel's 15 minutes of retransmissions:
# a writer blocked that long would not notice the outage, nor say so in /ready.
PG_CONNECT_ARGS = {
    "connect_timeout": PG_CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms
}


def database_url(config: Config, store: Store) -> str:
    """Where `store` lives: `router.database` (both stores in it), else its own SQLite file
    under state_dir (the ledger's may be moved with `router.usage_db`)."""
    url = config.router.database
    if url is None:
        if store == "ledger":
            path = config.state_dir / (config.router.usage_db or Path("usage.db")).expanduser()
        else:
            path = config.state_dir / "videos.db"
        return f"sqlite:///{path}"
    return normalize_url(url)


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3, the driver this project installs."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (None for an in-memory database)."""
    database = sa.make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def make_engine(url: str, *, pool_size: int = 5, create_folder: bool = True) -> sa.Engine:
    """An engine for `url`. A SQLite file's folder is created unless `create_folder` is False
    (readers such as `serving usage` must not create anything)."""
    url = normalize_url(url)
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is not None and create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S,
                                                     "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size,
                            connect_args=PG_CONNECT_ARGS)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
