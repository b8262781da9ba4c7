"""The ledger's state as Prometheus metrics, read at each scrape (nothing to keep in step)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from serving.ledger.store import Ledger


class LedgerCollector:
    """Register with a router's registry: `registry.register(LedgerCollector(ledger))`."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        s = self.ledger.state()
        yield GaugeMetricFamily("serving_ledger_up", "1 while the usage ledger's database "
                                "takes writes; 0 from a failed write until one succeeds.",
                                value=1 if s.up else 0)
        yield GaugeMetricFamily("serving_ledger_buffered_records", "Usage rows in memory, "
                                "not yet written (bounded by router.ledger.max_buffered).",
                                value=s.buffered)
        yield CounterMetricFamily("serving_ledger_written_records", "Usage rows written.",
                                  value=s.written)
        dropped = CounterMetricFamily(
            "serving_ledger_dropped_records", "Usage rows lost: `overflow`, the oldest "
            "dropped while the buffer was full; `rejected`, refused by the database.",
            labels=["reason"])
        dropped.add_metric(["overflow"], s.dropped)
        dropped.add_metric(["rejected"], s.rejected)
        yield dropped
