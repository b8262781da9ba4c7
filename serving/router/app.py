"""The router: a thin FastAPI app in front of the workers that owns the public contract.

`build_app` puts the app together around `Services` (`services.py`): the routes of each API
area, the error handlers, and the middleware every request passes through, listed outermost
first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from serving.cancel import ClientDisconnected
from serving.config import Config
from serving.errors import install_error_handlers
from serving.router import admin, health, models, reload, unsupported
from serving.router.audio import routes as audio_routes
from serving.router.call_worker import client_closed
from serving.router.dependencies import install_services
from serving.router.images import edits as image_edits
from serving.router.images import routes as image_routes
from serving.router.keys import Principal
from serving.router.middleware.auth import AuthMiddleware
from serving.router.middleware.body_size import (
    BodyLimits,
    BodySizeLimitMiddleware,
    body_limit,
)
from serving.router.middleware.cors import ConfiguredCORS
from serving.router.middleware.metering import MeteringMiddleware
from serving.router.middleware.request_id import RequestIdMiddleware
from serving.router.services import Services, build_services
from serving.router.text import chat, completions, messages, responses
from serving.router.videos import routes as video_routes
from serving.upstream.worker import Endpoints

ROUTERS = (health.router, models.router, chat.router, completions.router, responses.router,
           messages.router, image_routes.router, image_edits.router, video_routes.router,
           audio_routes.router, admin.router, reload.router, unsupported.router)


def middleware(services: Services) -> list[Middleware]:
    """Outermost first. The request id opens the request's context and writes the access log
    line; CORS answers preflights (which carry no key) before auth sees them; metering sees
    every request auth let through, to its last byte; the body cap is innermost, so a 413 is
    metered like any other answer. Each reads the settings of the deployment as it is now."""
    return [
        Middleware(RequestIdMiddleware),
        Middleware(ConfiguredCORS, origins=lambda: services.view.config.router.cors_origins),
        Middleware(AuthMiddleware, keys=lambda: services.view.keys),
        Middleware(MeteringMiddleware, metering=services.metering),
        Middleware(BodySizeLimitMiddleware, limits=_body_limits(services)),
    ]


def _body_limits(services: Services) -> Callable[[], BodyLimits]:
    """The body caps of the deployment now, worked out once per view."""
    made: list = [None, None]  # the view they were worked out for, and its limits

    def limits() -> BodyLimits:
        view = services.view
        if made[0] is not view:
            uploads = audio_routes.upload_limit(view.registry)
            made[:] = [view, BodyLimits(body_limit(view.config.router.max_body_bytes),
                                        {audio_routes.TRANSCRIPTIONS: uploads} if uploads
                                        else {})]
        return made[1]

    return limits


def build_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="serving",
        summary="OpenAI-compatible API in front of GPU model workers",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        middleware=middleware(services),
    )
    install_services(app, services)
    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnected, client_closed)
    for router in ROUTERS:
        app.include_router(router)
    return app


def create_app(config: Config, worker_urls: Mapping[str, str | Endpoints],
               keys: list[Principal]) -> FastAPI:
    """The app for `config`, its workers at `worker_urls` (each worker name -> where it
    listens: its replicas' URLs and pool router, for a worker with several)."""
    return build_app(build_services(config, worker_urls, keys))
