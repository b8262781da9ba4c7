"""The router's databases: SQLAlchemy engines from `router.database`, and schema migrations.

Two stores live here, each with its own migration history (and its own Alembic version table),
so each can sit in its own SQLite file by default (state_dir/usage.db, state_dir/videos.db, as
releases before migrations kept them) or both in one PostgreSQL database shared by router
replicas.
"""

from serving.db.engine import Store, database_url, make_engine
from serving.db.migrate import migrate

__all__ = ["Store", "database_url", "make_engine", "migrate"]
