"""POST /v1/admin/reload (admin key): apply the edited config files; GET: the last reload.

The process that can apply it answers: `serving up`'s launcher (workers and router), a lone
`serving router` (its own settings and worker URLs), or a router beside a stack, which passes
the request to the stack's launcher (`Services.reloader`). A config that fails its checks is a
400 naming the file and key, and nothing changes; a reload asked for while one runs is a 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.errors import OpenAIError
from serving.router.dependencies import AdminCtx, ServicesDep
from serving.router.services import Reloader, Services

router = APIRouter()

PATH = "/v1/admin/reload"


def _reloader(services: Services) -> Reloader:
    if services.reloader is None:
        raise OpenAIError(400, "This router cannot reload its configuration.",
                          code="reload_not_supported")
    return services.reloader


@router.post(PATH, status_code=202)
async def reload(_: AdminCtx, services: ServicesDep, request: Request) -> JSONResponse:
    auth = request.headers.get("authorization", "")
    return JSONResponse(await _reloader(services).request(auth), status_code=202)


@router.get(PATH)
async def last_reload(_: AdminCtx, services: ServicesDep, request: Request) -> dict[str, Any]:
    status = await _reloader(services).status(request.headers.get("authorization", ""))
    if status is None:
        raise OpenAIError(404, "No reload has been asked for since the stack started.",
                          code="not_found")
    return status
