"""What every store's Alembic `env.py` runs: migrate on the connection `migrate` hands over."""

from __future__ import annotations

from alembic import context


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through serving.db.migrate, which passes a "
                           "connection (there is no alembic.ini)")
    context.configure(connection=connection,
                      version_table=config.attributes["version_table"],
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
