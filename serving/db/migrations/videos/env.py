"""Alembic environment of the videos store (see serving/db/migrate.py)."""

from serving.db.migrations.env import run

run()
