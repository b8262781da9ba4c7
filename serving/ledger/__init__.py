"""The usage ledger: what every request cost, per key, model and endpoint (SQLite by default,
PostgreSQL shared by router replicas)."""

from serving.ledger.queries import GROUP_FIELDS, LedgerNotFound, query_totals
from serving.ledger.record import UsageRecord
from serving.ledger.report import format_table, parse_since
from serving.ledger.store import Ledger, LedgerState, ledger_path

__all__ = [
    "GROUP_FIELDS",
    "Ledger",
    "LedgerNotFound",
    "LedgerState",
    "UsageRecord",
    "format_table",
    "ledger_path",
    "parse_since",
    "query_totals",
]
