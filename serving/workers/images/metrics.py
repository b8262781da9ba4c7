"""The image worker's own Prometheus metrics (GET /metrics on its private port).

They show what batching does, which the router cannot see: how many pipeline calls served how
many requests and images, for generations and edits apart. One registry per worker app, not
the process-global one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class BatchMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["kind"]  # "generation" or "edit"
        self.calls = Counter("serving_image_pipeline_calls", "Pipeline calls run to the end.",
                             labels, registry=self.registry)
        self.requests = Counter("serving_image_batched_requests",
                                "Requests served by those pipeline calls.", labels,
                                registry=self.registry)
        self.images = Counter("serving_image_batched_images",
                              "Images made by those pipeline calls.", labels,
                              registry=self.registry)

    def observe(self, edit: bool, requests: int, images: int) -> None:
        kind = "edit" if edit else "generation"
        self.calls.labels(kind).inc()
        self.requests.labels(kind).inc(requests)
        self.images.labels(kind).inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
