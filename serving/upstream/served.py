"""A configured model and the worker that serves it: what a request is sent to."""

from __future__ import annotations

from dataclasses import dataclass

from serving.config import ModelEntry
from serving.upstream.worker import Worker


@dataclass(frozen=True)
class Served:
    entry: ModelEntry
    worker: Worker
    context_length: int | None = None  # vLLM's max_model_len, where the config sets it
