"""The usage ledger: what every request cost, per key, model and endpoint (SQLite)."""

from serving.ledger.record import UsageRecord
from serving.ledger.report import format_table, parse_since
from serving.ledger.store import GROUP_FIELDS, Ledger, ledger_path, query_records, query_totals

__all__ = [
    "GROUP_FIELDS",
    "Ledger",
    "UsageRecord",
    "format_table",
    "ledger_path",
    "parse_since",
    "query_records",
    "query_totals",
]
