"""How fast the usage ledger's writer stores rows (SQLite, and a throwaway local PostgreSQL),
and how much memory a row buffered during a database outage takes: the numbers behind
`router.ledger.max_buffered` in docs/operations.md.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_ledger.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from serving.config.deployment import LedgerConfig
from serving.ledger import Ledger, UsageRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support import local_servers


def record(i: int) -> UsageRecord:
    """A row as the router makes one: its own strings for the request id, the key, model and
    endpoint names shared with every other row (they come from the config and the routes)."""
    return UsageRecord(
        ts=time.time(), request_id=f"req_{secrets.token_hex(12)}", key_name="team-a",
        model="qwen2.5-7b-instruct", endpoint="/v1/chat/completions", status=200,
        prompt_tokens=100 + i % 900, completion_tokens=i % 500, cache_read_tokens=i % 64,
        latency_ms=123.0 + i % 1000)


def write_rate(url: str, rows: int) -> float:
    """Rows a second from the first append to the last commit."""
    records = [record(i) for i in range(rows)]
    with Ledger(url) as ledger:
        start = time.perf_counter()
        for r in records:
            ledger.append(r)
        assert ledger.flush(timeout=600)
        elapsed = time.perf_counter() - start
        assert ledger.totals()[0]["requests"] == rows
    return rows / elapsed


def bytes_per_buffered_row(rows: int) -> float:
    """Memory the buffer holds per row while the database is unreachable (nothing listens on
    port 9), the record itself included."""
    ledger = Ledger("postgresql://postgres@127.0.0.1:9/none", LedgerConfig(max_buffered=rows))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(rows):
        ledger.append(record(i))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert ledger.state().buffered == rows and ledger.state().dropped == 0
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    ledger.close(timeout=0)
    return grown / rows


def figure(rates: dict[str, float], buffered: float, path: Path) -> None:
    """The PNG for `--plot`: rows/s written per database, bytes per buffered row."""
    from plots import Bars, save

    save(path, "Usage ledger: write rate and outage buffer", [
        Bars("rows written per second", {db: {"rows/s": rate} for db, rate in rates.items()},
             title="writer, rows/s"),
        Bars("bytes", {"one buffered row": {"bytes": buffered}},
             title="memory per row buffered during an outage"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--plot", type=Path, help="also write a PNG of the results here")
    args = parser.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        rates["SQLite"] = write_rate(f"sqlite:///{Path(tmp) / 'usage.db'}", args.rows)
        print(f"SQLite:     {rates['SQLite']:,.0f} rows/s written")
        pg = local_servers.start_postgres(Path(tmp) / "pg")
        try:
            rates["PostgreSQL (local, fsync off)"] = write_rate(pg.url, args.rows)
            print(f"PostgreSQL: {rates['PostgreSQL (local, fsync off)']:,.0f} rows/s written "
                  "(local, fsync off)")
        finally:
            pg.stop("immediate")
    buffered = bytes_per_buffered_row(100_000)
    print(f"buffered:   {buffered:,.0f} bytes a row in memory")
    if args.plot:
        figure(rates, buffered, args.plot)


if __name__ == "__main__":
    main()
