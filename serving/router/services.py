"""The router's parts that live as long as the app, built from the config in one place.

`build_services` makes them (the workers' clients, the registry of public model names,
metering with its rate limiter and ledger, the video service); `Services.start` and `stop` run
their background work for the app's lifespan. The launcher gets the same object: it points a
worker's client at a restarted worker (`workers`), and the routes get its parts as typed
dependencies (`dependencies.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.config import Config, Modality
from serving.db import database_url
from serving.ledger import Ledger
from serving.ledger.metrics import LedgerMetrics
from serving.router.keys import KeyStore, Principal
from serving.router.metering import Metering
from serving.router.metrics import RouterMetrics
from serving.router.ratelimit import RateLimiter
from serving.router.registry import Registry
from serving.upstream.served import Served
from serving.upstream.worker import Endpoints, Worker
from serving.video_jobs.billing import VideoBilling
from serving.video_jobs.service import VideoService


@dataclass
class Services:
    config: Config
    keys: KeyStore
    registry: Registry
    workers: dict[str, Worker]
    metering: Metering
    videos: VideoService | None  # None when no video model is configured
    vllm_workers: frozenset[str]  # whose own Prometheus metrics /metrics appends
    created: int = field(default_factory=lambda: int(time.time()))  # `created` of models
    _publishing: asyncio.Task | None = None

    async def start(self) -> None:
        for worker in self.workers.values():  # media pools check their replicas' health
            worker.start()
        if self.videos is not None:
            await self.videos.start()
        metrics = self.metering.metrics
        if metrics.shared_folder:  # any router process answers a scrape for all of them
            self._publishing = asyncio.create_task(metrics.keep_published())

    async def stop(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
        if self.videos is not None:
            await self.videos.stop()
        for worker in self.workers.values():
            await worker.aclose()
        await self.metering.limiter.aclose()
        await asyncio.to_thread(self.metering.ledger.close)


def build_workers(config: Config, endpoints: Mapping[str, str | Endpoints]) -> dict[str, Worker]:
    """A client for each configured worker, at `endpoints[name]` (its replicas' URLs, and the
    pool router's for a chat pool)."""
    router = config.router
    return {name: Worker(name, endpoints[name], router.timeouts,
                         router.max_connections_per_worker,
                         health_interval_s=w.routing.health_check_interval_s)
            for name, w in config.workers.items()}


def build_registry(config: Config, workers: Mapping[str, Worker]) -> Registry:
    return Registry([Served(w.entry, workers[name], getattr(w.args, "max_model_len", None))
                     for name, w in config.workers.items() if w.entry is not None])


def build_services(config: Config, endpoints: Mapping[str, str | Endpoints],
                   keys: list[Principal], metrics_folder: str | None = None) -> Services:
    """Every part of the router. `metrics_folder`: the folder router processes share their
    metrics in (`router.processes` > 1), else None."""
    workers = build_workers(config, endpoints)
    registry = build_registry(config, workers)
    metrics = RouterMetrics(metrics_folder)
    ledger = Ledger(database_url(config, "ledger"), config.router.ledger)
    metrics.publishers.append(LedgerMetrics(ledger, metrics.registry).publish)
    metering = Metering(RateLimiter.from_config(config.router), ledger, metrics,
                        {name: w.max_in_flight for name, w in config.workers.items()})
    video_models = [s for s in registry.served if s.entry.modality == Modality.video]
    videos = None
    if video_models:
        billing = VideoBilling(ledger, {k.sha256: k.name for k in keys})
        videos = VideoService(config, video_models, billing, metrics.registry)
    return Services(
        config=config, keys=KeyStore(keys), registry=registry, workers=workers,
        metering=metering, videos=videos,
        vllm_workers=frozenset(name for name, w in config.workers.items()
                               if w.entry is not None and w.entry.engine == "vllm"))
