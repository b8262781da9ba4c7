"""The router: a thin FastAPI app in front of the workers that owns the public contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from serving.cancel import ClientDisconnected
from serving.config import Config, Modality
from serving.db import database_url
from serving.errors import install_error_handlers
from serving.ledger import Ledger
from serving.ledger.metrics import LedgerMetrics
from serving.router import admin, health, models, unsupported
from serving.router.audio import routes as audio_routes
from serving.router.call_worker import client_closed
from serving.router.dependencies import Services, install_services
from serving.router.images import routes as image_routes
from serving.router.keys import KeyStore, Principal
from serving.router.metering import Metering
from serving.router.metrics import RouterMetrics
from serving.router.middleware.auth import AuthMiddleware
from serving.router.middleware.body_size import BodySizeLimitMiddleware
from serving.router.middleware.metering import MeteringMiddleware
from serving.router.middleware.request_id import RequestIdMiddleware
from serving.router.ratelimit import RateLimiter
from serving.router.registry import Registry, Served
from serving.router.text import routes as text_routes
from serving.router.videos import routes as video_routes
from serving.router.workers import Endpoints, Worker
from serving.video_jobs.billing import VideoBilling
from serving.video_jobs.service import VideoService


def create_app(config: Config, worker_urls: Mapping[str, str | Endpoints],
               keys: list[Principal]) -> FastAPI:
    """`worker_urls` maps each worker name in `config.workers` to where it listens (its
    replicas' URLs and pool router, for a worker with several)."""
    router_config = config.router
    workers = {
        name: Worker(name, worker_urls[name], router_config.timeouts,
                     router_config.max_connections_per_worker,
                     health_interval_s=w.routing.health_check_interval_s)
        for name, w in config.workers.items()
    }
    registry = Registry([
        Served(w.entry, workers[name], getattr(w.args, "max_model_len", None))
        for name, w in config.workers.items()
        if w.entry is not None
    ])

    metering = Metering(
        RateLimiter.from_config(router_config),
        Ledger(database_url(config, "ledger"), router_config.ledger), RouterMetrics(),
        {name: w.max_in_flight for name, w in config.workers.items()},
    )
    metering.metrics.publishers.append(
        LedgerMetrics(metering.ledger, metering.metrics.registry).publish)
    video_models = [s for s in registry.served if s.entry.modality == Modality.video]
    billing = VideoBilling(metering.ledger, {k.sha256: k.name for k in keys})
    videos = (VideoService(config, video_models, billing, metering.metrics.registry)
              if video_models else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for worker in workers.values():  # media pools check their replicas' health
            worker.start()
        if videos is not None:
            await videos.start()
        publishing = (asyncio.create_task(metering.metrics.keep_published())
                      if metering.metrics.shared_folder else None)
        yield
        if publishing is not None:
            publishing.cancel()
        if videos is not None:
            await videos.stop()
        for worker in workers.values():
            await worker.aclose()
        await metering.limiter.aclose()
        await asyncio.to_thread(metering.ledger.close)

    app = FastAPI(
        title="serving",
        summary="OpenAI-compatible API in front of GPU model workers",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_services(app, Services(
        config=config, registry=registry, workers=workers, metering=metering, videos=videos,
        vllm_workers=frozenset(name for name, w in config.workers.items()
                               if w.entry is not None and w.entry.engine == "vllm"),
        created=int(time.time()),
    ))

    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnected, client_closed)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(text_routes.router)
    app.include_router(image_routes.router)
    app.include_router(video_routes.router)
    app.include_router(audio_routes.router)
    app.include_router(admin.router)
    app.include_router(unsupported.router)

    # Added innermost first: the request id (which opens the request's context and writes the
    # access log) wraps CORS, which wraps auth, so CORS preflights (which carry no key) are
    # answered before auth sees them; metering sees every request auth let through, to its
    # last byte.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=router_config.max_body_bytes,
                       exempt=("/v1/audio/transcriptions",))
    app.add_middleware(MeteringMiddleware, metering=metering)
    app.add_middleware(AuthMiddleware, keys=KeyStore(keys))
    if router_config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=router_config.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id"],
        )
    app.add_middleware(RequestIdMiddleware)
    return app
