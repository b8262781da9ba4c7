"""What a route may ask for, as typed FastAPI dependencies.

`Ctx` is the request's own context (its key, meter and id); the others are the router's shared
parts, built once into one `Services` (`services.py`). A route lists what it needs in its
signature instead of reaching into `request.state` or `app.state`, and a test can replace any
of them with `app.dependency_overrides`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from serving.config import Config
from serving.errors import OpenAIError
from serving.router.context import RequestContext, context_of
from serving.router.metering import Metering
from serving.router.registry import Registry
from serving.router.services import RouterView, Services
from serving.video_jobs.service import VideoService


def install_services(app: FastAPI, services: Services) -> None:
    app.state.services = services


def services_of(app: FastAPI) -> Services:
    """The one place the app's parts are read from the app."""
    return app.state.services


async def _services(request: Request) -> Services:
    return services_of(request.app)


async def _view(request: Request) -> RouterView:
    """The deployment as this request sees it: read once per request (FastAPI caches a
    dependency's value for the request), so a reload mid-request never mixes two configs."""
    return services_of(request.app).view


ViewDep = Annotated[RouterView, Depends(_view)]


async def _registry(view: ViewDep) -> Registry:
    return view.registry


async def _metering(request: Request) -> Metering:
    return services_of(request.app).metering


async def _config(view: ViewDep) -> Config:
    return view.config


async def request_context(request: Request) -> RequestContext:
    return context_of(request.scope)


async def admin_context(request: Request) -> RequestContext:
    """Usage and metrics are for operators: other keys get OpenAI's 403."""
    ctx = context_of(request.scope)
    if ctx.key is None or not ctx.key.admin:
        raise OpenAIError(403, "This endpoint needs an admin key.", type="invalid_request_error",
                          code="insufficient_permissions")
    return ctx


Ctx = Annotated[RequestContext, Depends(request_context)]
AdminCtx = Annotated[RequestContext, Depends(admin_context)]
ServicesDep = Annotated[Services, Depends(_services)]
RegistryDep = Annotated[Registry, Depends(_registry)]
MeteringDep = Annotated[Metering, Depends(_metering)]
ConfigDep = Annotated[Config, Depends(_config)]


async def _videos(request: Request) -> VideoService:
    videos = services_of(request.app).videos
    if videos is None:
        raise OpenAIError(404, "No video model is configured.", param="model",
                          code="model_not_found")
    return videos


VideosDep = Annotated[VideoService, Depends(_videos)]
