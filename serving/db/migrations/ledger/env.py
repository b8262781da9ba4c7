"""Alembic environment of the ledger store (see serving/db/migrate.py)."""

from serving.db.migrations.env import run

run()
