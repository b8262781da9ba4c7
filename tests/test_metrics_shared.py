"""Router processes that share their metrics (`router.processes` > 1): real processes in
prometheus_client's multiprocess mode, and a scrape of any one that answers for all of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from serving.router.metrics import SHARED_METRICS_ENV, RouterMetrics

ROOT = Path(__file__).resolve().parent.parent

# One router process: counts `n` chat requests, holds one in flight, and publishes its
# ledger's state (`n` rows written, `up` as given), then waits to be killed.
PROCESS = """
import sys
from serving.ledger.metrics import LedgerMetrics
from serving.ledger.store import LedgerState
from serving.router.metrics import RouterMetrics

n, up = int(sys.argv[1]), sys.argv[2] == "up"

class Ledger:
    def state(self):
        return LedgerState(up=up, buffered=n, written=n, dropped=0, rejected=0,
                           down_since=None)

metrics = RouterMetrics()
metrics.publishers.append(LedgerMetrics(Ledger(), metrics.registry).publish)
for _ in range(n):
    metrics.requests.labels("/v1/chat/completions", "m", "200").inc()
metrics.in_flight.labels("/v1/chat/completions", "m").inc()
metrics.publish()
print("ready", flush=True)
sys.stdin.read()
"""


def samples(metrics: RouterMetrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if not s.name.endswith("_created")}


def test_a_scrape_of_one_process_counts_every_process(tmp_path: Path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, SHARED_METRICS_ENV: str(folder), "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", PROCESS, str(n), state], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for n, state in ((3, "up"), (5, "down"))]
    try:
        for p in processes:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        seen = samples(RouterMetrics(shared_folder=str(folder)))
        assert seen["serving_requests_total"] == 8
        assert seen["serving_requests_in_flight"] == 2
        assert seen["serving_ledger_written_records_total"] == 8
        assert seen["serving_ledger_buffered_records"] == 8
        assert seen["serving_ledger_up"] == 0  # down in one process

        # A process that dies: its requests stay counted, its in-flight gauges go.
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait()
        seen = samples(RouterMetrics(shared_folder=str(folder)))
        assert seen["serving_requests_total"] == 8
        assert seen["serving_requests_in_flight"] == 1
        assert seen["serving_ledger_up"] == 1
    finally:
        for p in processes:
            p.kill()
            p.wait()


def test_without_a_shared_folder_a_process_counts_itself(monkeypatch):
    monkeypatch.delenv(SHARED_METRICS_ENV, raising=False)
    metrics = RouterMetrics()
    metrics.requests.labels("/v1/chat/completions", "m", "200").inc()
    assert metrics.shared_folder is None
    assert samples(metrics)["serving_requests_total"] == 1
