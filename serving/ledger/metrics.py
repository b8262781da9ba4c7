"""The ledger's state as Prometheus metrics, published from `Ledger.state()` before each scrape
(and every second when several router processes share their metrics: any one may answer)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from serving.ledger.store import Ledger


class LedgerMetrics:
    def __init__(self, ledger: Ledger, registry: CollectorRegistry):
        self.ledger = ledger
        self.up = Gauge("serving_ledger_up", "1 while the usage ledger's database takes "
                        "writes; 0 from a failed write until one succeeds (0 if so in any "
                        "router process).", multiprocess_mode="livemin", registry=registry)
        self.buffered = Gauge("serving_ledger_buffered_records", "Usage rows in memory, not "
                              "yet written (bounded by router.ledger.max_buffered per process).",
                              multiprocess_mode="livesum", registry=registry)
        self.written = Counter("serving_ledger_written_records", "Usage rows written.",
                               registry=registry)
        self.dropped = Counter("serving_ledger_dropped_records", "Usage rows lost: `overflow`, "
                               "the oldest dropped while the buffer was full; `rejected`, "
                               "refused by the database.", ["reason"], registry=registry)
        self._counted = {"written": 0, "overflow": 0, "rejected": 0}

    def publish(self) -> None:
        s = self.ledger.state()
        self.up.set(1 if s.up else 0)
        self.buffered.set(s.buffered)
        for name, now, counter in (("written", s.written, self.written),
                                   ("overflow", s.dropped, self.dropped.labels("overflow")),
                                   ("rejected", s.rejected, self.dropped.labels("rejected"))):
            counter.inc(now - self._counted[name])
            self._counted[name] = now
