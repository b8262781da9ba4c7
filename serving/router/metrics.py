"""Prometheus metrics of the router, with the vLLM workers' own metrics merged in.

One registry per app (not the process-global one) so several routers in one process, as in
tests, never mix their counts. `GET /metrics` needs an admin key on the API port; an operator
can also serve it without a key on a separate port (`router.metrics_port`) for a scraper on a
private network.

With several router processes on one port (`router.processes`) a scrape reaches any one of
them, so they keep their values in one folder with prometheus_client's multiprocess mode
(`share_metrics`), and each answers for all: counters and histograms summed, in-flight gauges
summed over the live processes, health gauges as last set by any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path

import httpx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from serving.upstream.worker import Worker

CONTENT_TYPE = CONTENT_TYPE_LATEST

log = logging.getLogger("serving.router")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

# prometheus_client's multiprocess folder. Only router processes share it: a worker (vLLM)
# that inherited it would write its own metrics there.
SHARED_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY_S = 1.0
_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def share_metrics() -> Path:
    """Make this process (router process 0) keep its metrics in a new folder of its own, and
    return it: the other router processes get it in `SHARED_METRICS_ENV`. Under the temp dir,
    so local to the node (and the pod): its files are memory-mapped. Call this before any
    metric exists: the storage of a metric is chosen when it is created."""
    folder = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
    os.environ[SHARED_METRICS_ENV] = str(folder)
    values.ValueClass = values.get_value_class()
    return folder


def _forget_dead_processes(folder: str) -> None:
    """A router process that died (and was restarted under another pid) leaves its gauges'
    file behind; its in-flight requests must not count. Its counters stay in the sums."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if (m := _LIVE_FILE.match(name)) is not None:
                pid = int(m.group(1))
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    multiprocess.mark_process_dead(pid, folder)
                except PermissionError:
                    pass


class RouterMetrics:
    def __init__(self, shared_folder: str | None = None) -> None:
        """`shared_folder`: the multiprocess folder the router processes share (from
        `share_metrics`, or SHARED_METRICS_ENV in the processes it starts); None: this
        process alone."""
        self.shared_folder = shared_folder
        # Called before each scrape (and every second with several processes): they turn
        # state kept elsewhere, such as the ledger's, into metrics.
        self.publishers: list[Callable[[], None]] = []
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("serving_requests", "Requests answered, by endpoint, model "
                                "and HTTP status.", ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram("serving_request_duration_seconds", "Time from request to "
                                 "the last byte of the response.", ["endpoint", "model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("serving_requests_in_flight", "Requests being served.",
                               ["endpoint", "model"], multiprocess_mode="livesum", registry=r)
        self.ttft = Histogram("serving_time_to_first_token_seconds", "Streamed chat: time "
                              "from request to the first content event.", ["model"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tokens_per_s = Histogram("serving_output_tokens_per_second", "Completion tokens "
                                      "per second of each chat request.", ["model"],
                                      buckets=_RATE_BUCKETS, registry=r)
        self.tokens = Counter("serving_tokens", "Tokens metered, by kind (prompt, completion, "
                              "cache_read, cache_creation).", ["model", "kind"], registry=r)
        self.rate_limited = Counter("serving_rate_limit_rejections", "Requests refused with "
                                    "429 by the per-key rate limits.", ["key", "kind"],
                                    registry=r)
        self.overloaded = Counter("serving_overload_rejections", "Requests refused with 503 "
                                  "because the model had its cap of requests in flight.",
                                  ["model"], registry=r)
        self.worker_up = Gauge("serving_worker_up", "1 when the worker answers its health "
                               "check (a pool: its router and at least one replica).",
                               ["worker"], multiprocess_mode="livemostrecent", registry=r)
        self.reloads = Counter("serving_reloads", "Config reloads asked for, by result: "
                               "applied, failed (the old state kept serving) or refused (the "
                               "config did not pass its checks).", ["result"], registry=r)
        self.replica_up = Gauge("serving_replica_up", "1 when the replica of a pooled worker "
                                "answers its health check.", ["worker", "replica"],
                                multiprocess_mode="livemostrecent", registry=r)

    def publish(self) -> None:
        for publisher in self.publishers:
            publisher()

    async def keep_published(self) -> None:
        """With several processes, any of them answers a scrape: each publishes its state
        every second rather than only when it is the one scraped."""
        while True:
            self.publish()
            await asyncio.sleep(PUBLISH_EVERY_S)

    def exposition(self) -> bytes:
        """This process's metrics; with several processes, all of theirs together."""
        self.publish()
        if self.shared_folder is None:
            return generate_latest(self.registry)
        _forget_dead_processes(self.shared_folder)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, path=self.shared_folder)
        return generate_latest(everyone)

    def observe_usage(self, model: str, usage: dict) -> None:
        # Chat's names, then the Responses API's for the same counts.
        for kind, field, other in (
            ("prompt", "prompt_tokens", "input_tokens"),
            ("completion", "completion_tokens", "output_tokens"),
            ("cache_read", "cache_read_input_tokens", None),
            ("cache_creation", "cache_creation_input_tokens", None),
        ):
            if count := usage.get(field) or (other and usage.get(other)):
                self.tokens.labels(model, kind).inc(count)

    async def render(self, workers: Mapping[str, Worker], vllm_workers: Set[str]) -> bytes:
        """The router's metrics, then the vLLM workers' own (named `vllm:...`, so they cannot
        clash with ours), merged into one family per metric with a `worker` label, and a
        `replica` label for each replica of a pool (scraped one by one, not through its pool
        router); then a chat pool router's own (`smg_...`, `vllm_router_...`), where the replica its
        samples name by URL becomes the `replica` label."""

        async def probe(name: str, worker: Worker) -> dict[str, str]:
            states = await worker.probe()
            self.worker_up.labels(name).set(1 if worker.serves(states) else 0)
            texts: dict[str, str | None] = {}
            for replica in worker.replicas:
                if worker.pooled:
                    self.replica_up.labels(name, str(replica.index)).set(
                        1 if states[replica.name] else 0)
                if states[replica.name] and name in vllm_workers:
                    texts[replica.name] = await _scrape(replica.client, "/metrics")
            gateway = worker.gateway
            if gateway is not None and worker.gateway_metrics and states[gateway.name]:
                text = await _scrape(gateway.client, worker.gateway_metrics)
                for replica in worker.replicas:  # its samples name replicas by URL
                    text = text and text.replace(f'worker="{replica.base_url}"',
                                                 f'replica="{replica.index}"')
                texts[gateway.name] = text
            return {k: text for k, text in texts.items() if text is not None}

        if not self.shared_folder:  # a worker a reload removed is no longer shown
            self.worker_up.clear()
            self.replica_up.clear()
        labels, texts = {}, {}
        for name, found in zip(workers, await asyncio.gather(
                *(probe(n, w) for n, w in workers.items())), strict=True):
            worker = workers[name]
            for member in [*worker.replicas, *([worker.gateway] if worker.gateway else [])]:
                if member.name in found:
                    texts[member.name] = found[member.name]
                    labels[member.name] = {"worker": name} if member.index is None else {
                        "worker": name, "replica": str(member.index)}
        return self.exposition() + merge_worker_metrics(texts, labels)


async def _scrape(client: httpx.AsyncClient, url: str) -> str | None:
    """A worker's (or pool router's) metrics text; None when it does not answer them now."""
    with contextlib.suppress(httpx.HTTPError):
        r = await client.get(url, timeout=5.0)
        if r.status_code == 200:
            return r.text
    return None


class _Families:
    """Already-built metric families, in the shape `generate_latest` collects from."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def merge_worker_metrics(texts: dict[str, str],
                         labels: dict[str, dict[str, str]] | None = None) -> bytes:
    """Several workers' expositions as one: each metric family once (a repeated `# TYPE` line
    makes Prometheus reject the whole scrape), every sample labelled with its `worker` (the
    key of `texts`), or with `labels[key]` where given (a replica's `worker` and `replica`).

    The generic python_/process_ families describe a worker process rather than its model,
    and are left out. A family another worker declared with a different type is left out for
    that worker (with a warning) rather than breaking the scrape.
    """
    labels = labels or {}
    merged: dict[str, Metric] = {}
    for worker, text in texts.items():
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as e:
            log.warning("metrics of worker %s do not parse; left out: %s", worker, e)
            continue
        for family in families:
            if family.name.startswith(("python_", "process_")):
                continue
            into = merged.setdefault(family.name, Metric(family.name, family.documentation,
                                                         family.type, family.unit))
            if into.type != family.type:
                log.warning("metric %s of worker %s is a %s, not a %s; left out",
                            family.name, worker, family.type, into.type)
                continue
            extra = labels.get(worker) or {"worker": worker}
            into.samples += [s._replace(labels={**s.labels, **extra}) for s in family.samples]
    return generate_latest(_Families(merged.values()))  # type: ignore[arg-type]
