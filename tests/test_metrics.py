"""Two vLLM workers' expositions merge into one that Prometheus accepts; a chat pool's replicas
and its router show under their own labels."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from serving.config.deployment import Timeouts
from serving.router.metrics import RouterMetrics, merge_worker_metrics
from serving.upstream.worker import Endpoints, Worker
from tests.support.loopback import LoopbackServer, QuietHandler


def vllm_exposition(model: str, prompt_tokens: int, running: int) -> str:
    """What a vLLM worker's /metrics looks like: vllm:* families labelled with the model, and
    the generic process_* ones."""
    r = CollectorRegistry()
    ProcessCollector(registry=r)
    Counter("vllm:prompt_tokens", "Prefill tokens processed.", ["model_name"],
            registry=r).labels(model).inc(prompt_tokens)
    Gauge("vllm:num_requests_running", "Requests running.", ["model_name"],
          registry=r).labels(model).set(running)
    Histogram("vllm:e2e_request_latency_seconds", "End-to-end latency.", ["model_name"],
              buckets=(0.5, 1, 5), registry=r).labels(model).observe(0.7)
    return generate_latest(r).decode()


def test_two_workers_merge_into_one_family_per_metric_with_a_worker_label():
    texts = {"chat": vllm_exposition("small", 11, 2), "chat-big": vllm_exposition("big", 29, 5)}
    # Concatenated, as before, the TYPE lines repeat: what Prometheus rejects.
    assert "".join(texts.values()).count("# TYPE vllm:prompt_tokens_total counter") == 2

    text = merge_worker_metrics(texts).decode()

    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert sorted(type_lines) == sorted(set(type_lines))
    assert "# TYPE vllm:prompt_tokens_total counter" in type_lines
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert not any(name.startswith("process_") for name in families)
    assert {name for name in families if not name.endswith("_created")} == {
        "vllm:prompt_tokens", "vllm:num_requests_running", "vllm:e2e_request_latency_seconds"}

    prompt = {s.labels["worker"]: (s.labels["model_name"], s.value)
              for s in families["vllm:prompt_tokens"].samples if s.name.endswith("_total")}
    assert prompt == {"chat": ("small", 11), "chat-big": ("big", 29)}
    running = {s.labels["worker"]: s.value
               for s in families["vllm:num_requests_running"].samples}
    assert running == {"chat": 2, "chat-big": 5}
    buckets = Tally(s.labels["worker"] for s in families["vllm:e2e_request_latency_seconds"]
                    .samples if s.name.endswith("_bucket"))
    assert buckets == {"chat": 4, "chat-big": 4}  # 0.5, 1, 5, +Inf for each


def test_a_worker_whose_metrics_do_not_parse_is_left_out():
    texts = {"chat": vllm_exposition("small", 3, 0), "broken": "vllm:x{ 1\n"}
    families = list(text_string_to_metric_families(merge_worker_metrics(texts).decode()))
    workers = {s.labels["worker"] for f in families for s in f.samples}
    assert workers == {"chat"}


class Pages(LoopbackServer):
    """A real HTTP server on loopback that answers GET `path` with `pages[path]` (404 else)."""

    def __init__(self, pages: dict[str, str]):
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                data = (body or "").encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


def test_a_chat_pool_shows_each_replica_and_its_routers_own_metrics():
    """Each vLLM replica scraped on its own (`replica` label), and the pool router's metrics
    (vllm-router's, which name each replica by URL) with the replica's index instead."""
    replicas = [Pages({"/health": "", "/metrics": vllm_exposition("m", n, 0)})
                for n in (11, 29)]
    router_text = "".join(
        f'vllm_router_worker_health{{worker="{r.url}"}} 1\n' for r in replicas)
    gateway = Pages({"/liveness": "", "/metrics": "# TYPE vllm_router_active_workers gauge\n"
                     "vllm_router_active_workers 2\n# TYPE vllm_router_worker_health gauge\n"
                     + router_text})
    endpoints = Endpoints(tuple(r.url for r in replicas), gateway.url, gateway.url + "/metrics")

    async def render() -> str:
        worker = Worker("chat", endpoints, Timeouts(), max_connections=4)
        try:
            return (await RouterMetrics().render({"chat": worker}, {"chat"})).decode()
        finally:
            await worker.aclose()

    try:
        text = asyncio.run(render())
    finally:
        for server in (*replicas, gateway):
            server.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    prompt = {s.labels["replica"]: s.value for s in families["vllm:prompt_tokens"].samples
              if s.name.endswith("_total")}
    assert prompt == {"0": 11, "1": 29}
    health = [s.labels for s in families["vllm_router_worker_health"].samples]
    assert health == [{"worker": "chat", "replica": "0"}, {"worker": "chat", "replica": "1"}]
    assert [s.labels for s in families["vllm_router_active_workers"].samples] == [
        {"worker": "chat"}]
    assert 'serving_worker_up{worker="chat"} 1.0' in text
