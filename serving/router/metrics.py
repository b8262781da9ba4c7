"""Prometheus metrics of the router, with the vLLM workers' own metrics appended.

One registry per app (not the process-global one) so several routers in one process, as in
tests, never mix their counts. `GET /metrics` needs an admin key on the API port; an operator
can also serve it without a key on a separate port (`router.metrics_port`) for a scraper on a
private network.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serving.router.workers import Worker

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("serving_requests", "Requests answered, by endpoint, model "
                                "and HTTP status.", ["endpoint", "model", "status"], registry=r)
        self.latency = Histogram("serving_request_duration_seconds", "Time from request to "
                                 "the last byte of the response.", ["endpoint", "model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("serving_requests_in_flight", "Requests being served.",
                               ["endpoint", "model"], registry=r)
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
                               "check.", ["worker"], registry=r)

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

    async def render(self, workers: dict[str, Worker], vllm_workers: set[str]) -> bytes:
        """The router's metrics, then each vLLM worker's own (its metric names are prefixed
        `vllm:` and labelled with the model, so they cannot clash with ours)."""

        async def probe(name: str, worker: Worker) -> bytes:
            up = await worker.healthy()
            self.worker_up.labels(name).set(1 if up else 0)
            if not up or name not in vllm_workers:
                return b""
            with contextlib.suppress(httpx.HTTPError):
                r = await worker.client.get("/metrics", timeout=5.0)
                if r.status_code == 200:
                    return _without_process_metrics(r.content)
            return b""

        extra = await asyncio.gather(*(probe(n, w) for n, w in workers.items()))
        return generate_latest(self.registry) + b"".join(extra)


def _without_process_metrics(text: bytes) -> bytes:
    """vLLM's exposition minus the generic python_/process_ families, which describe the
    worker process rather than the model and would clash between several workers."""
    keep = [line for line in text.splitlines(keepends=True)
            if not _generic(line)]
    return b"".join(keep)


def _generic(line: bytes) -> bool:
    name = line.split(b" ", 3)[2] if line.startswith(b"# ") and line.count(b" ") >= 2 else line
    return name.startswith((b"python_", b"process_"))
