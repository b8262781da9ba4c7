"""Bring a store's tables to the newest schema with Alembic, at every start.

Each store has its own history (`migrations/ledger`, `migrations/videos`) and version table
(`alembic_version_ledger`, `alembic_version_videos`). The first revision of each is the schema
that releases before migrations created without any version table; it creates only what is
missing, so such a database is adopted in place with its rows, then upgraded like any other.

Several router replicas may start at once against one PostgreSQL database: the upgrade runs in
one transaction under an advisory lock, so one replica migrates and the others find it done.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from serving.db.engine import Store

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(store: Store, connection: sa.Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS / store))
    config.attributes["version_table"] = f"alembic_version_{store}"
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: sa.Engine, store: Store) -> None:
    """Upgrade `store`'s tables in `engine` to the newest revision."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            lock = zlib.crc32(f"serving-migrate-{store}".encode())
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
        command.upgrade(alembic_config(store, connection), "head")
