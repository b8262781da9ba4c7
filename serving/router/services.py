"""The router's parts, built from the config in one place, and the view a reload swaps.

`RouterView` is everything a request reads that a reload may change: the config, the keys,
the registry of public model names and the workers' clients. `Services.apply` swaps it in one
step, so a request sees either the old deployment or the new one, never a mix; requests
admitted before keep the `Served` (and so the worker) they resolved. The parts that live as
long as the process (metering with its rate limiter, ledger and metrics; the video service)
stay. `build_services` makes them; `Services.start` and `stop` run their background work for
the app's lifespan. The launcher gets the same object: it points a worker's client at a
restarted worker, and applies a reload through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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

log = logging.getLogger("serving.router")


class Reloader(Protocol):
    """Who applies `POST /v1/admin/reload`: the launcher (workers and router), a lone router
    (its own settings), or a router beside a stack (forwarded to the stack's launcher)."""

    async def request(self, authorization: str) -> dict[str, Any]:
        """Start a reload: its status (`pending`, with an id), or raise the 400/409.
        `authorization` is the caller's (admin) credential, for a reloader that passes the
        request on."""

    async def status(self, authorization: str) -> dict[str, Any] | None:
        """The last reload's status, or None if there was none."""


def config_digest(config: Config) -> str:
    """A short hash of everything the config says, its workers' catalog entries included:
    what /ready shows, and how a router beside a stack sees that the stack reloaded."""
    entries = {name: w.entry.model_dump(mode="json") for name, w in config.workers.items()
               if w.entry is not None}
    text = config.model_dump_json() + repr(sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RouterView:
    """What a request reads that a reload may change, swapped whole."""

    config: Config
    keys: KeyStore
    registry: Registry
    workers: Mapping[str, Worker]
    digest: str

    @property
    def vllm_workers(self) -> frozenset[str]:
        """Whose own Prometheus metrics /metrics appends."""
        return frozenset(name for name, w in self.config.workers.items()
                         if w.entry is not None and w.entry.engine == "vllm")


@dataclass
class Services:
    view: RouterView
    metering: Metering
    videos: VideoService | None  # None while no video model is configured
    created: int = field(default_factory=lambda: int(time.time()))  # `created` of models
    reloader: Reloader | None = None
    _publishing: asyncio.Task | None = None
    _started: bool = False

    @property
    def config(self) -> Config:
        return self.view.config

    @property
    def registry(self) -> Registry:
        return self.view.registry

    @property
    def workers(self) -> Mapping[str, Worker]:
        return self.view.workers

    async def start(self) -> None:
        for worker in self.view.workers.values():  # media pools check their replicas' health
            worker.start()
        if self.videos is not None:
            await self.videos.start()
        metrics = self.metering.metrics
        if metrics.shared_folder:  # any router process answers a scrape for all of them
            self._publishing = asyncio.create_task(metrics.keep_published())
        self._started = True

    async def apply(self, view: RouterView) -> list[Worker]:
        """Serve `view` from the next request on. Returns the workers' clients that left it:
        the caller drains them (`Worker.drained`) and closes them."""
        old = self.view
        kept = {id(w) for w in view.workers.values()}
        left = [w for w in old.workers.values() if id(w) not in kept]
        if self._started:
            for worker in view.workers.values():
                worker.start()  # a no-op for the workers it had
        self.view = view
        await self._update_videos(view)
        logging.getLogger().setLevel(view.config.router.log_level.upper())
        return left

    async def _update_videos(self, view: RouterView) -> None:
        served = [s for s in view.registry.served if s.entry.modality == Modality.video]
        if self.videos is None and served:
            self.videos = VideoService(view.config, served, VideoBilling(
                self.metering.ledger, {}), self.metering.metrics.registry)
            if self._started:
                await self.videos.start()
        if self.videos is not None:
            self.videos.billing.key_names = view.keys.names()
            await self.videos.update(served)

    async def retire(self, workers: list[Worker], timeout_s: float) -> None:
        """Close the clients of workers that left the view once their requests ended."""
        for worker in workers:
            if not await worker.drained(timeout_s):
                log.warning("%s: %d request(s) still in flight after %.0f s; closing",
                            worker.name, worker.active, timeout_s)
            await worker.aclose()

    async def stop(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
        if self.videos is not None:
            await self.videos.stop()
        for worker in self.view.workers.values():
            await worker.aclose()
        await self.metering.limiter.aclose()
        await asyncio.to_thread(self.metering.ledger.close)


def build_workers(config: Config, endpoints: Mapping[str, str | Endpoints],
                  reuse: Mapping[str, Worker] | None = None) -> dict[str, Worker]:
    """A client for each configured worker, at `endpoints[name]` (its replicas' URLs, and the
    pool router's for a chat pool). Clients in `reuse` are kept as they are."""
    router, reuse = config.router, reuse or {}
    return {name: reuse.get(name) or Worker(
                name, endpoints[name], router.timeouts, router.max_connections_per_worker,
                health_interval_s=w.routing.health_check_interval_s,
                max_in_flight=w.max_in_flight)
            for name, w in config.workers.items()}


def build_view(config: Config, workers: Mapping[str, Worker], keys: list[Principal],
               reloading: Mapping[str, float] | None = None) -> RouterView:
    """The view of `config` with `workers`; models in `reloading` (model id -> seconds) answer
    503 `model_reloading` meanwhile."""
    registry = Registry([Served(w.entry, workers[name], getattr(w.args, "max_model_len", None))
                         for name, w in config.workers.items() if w.entry is not None],
                        reloading)
    return RouterView(config, KeyStore(keys), registry, dict(workers), config_digest(config))


def build_services(config: Config, endpoints: Mapping[str, str | Endpoints],
                   keys: list[Principal], metrics_folder: str | None = None) -> Services:
    """Every part of the router. `metrics_folder`: the folder router processes share their
    metrics in (`router.processes` > 1), else None."""
    view = build_view(config, build_workers(config, endpoints), keys)
    metrics = RouterMetrics(metrics_folder)
    ledger = Ledger(database_url(config, "ledger"), config.router.ledger)
    metrics.publishers.append(LedgerMetrics(ledger, metrics.registry).publish)
    metering = Metering(RateLimiter.from_config(config.router), ledger, metrics)
    video_models = [s for s in view.registry.served if s.entry.modality == Modality.video]
    videos = None
    if video_models:
        billing = VideoBilling(ledger, view.keys.names())
        videos = VideoService(config, video_models, billing, metrics.registry)
    return Services(view=view, metering=metering, videos=videos)
