"""POST /v1/images/generations: validate against the catalog, forward, pass the answer back."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.config import Modality
from serving.protocol.images import ImageGenerationRequest, resolve_image_request
from serving.router.json_body import StrictJSONRoute
from serving.router.metering import CLIENT_CLOSED, meter
from serving.router.middleware.request_id import worker_request_id
from serving.router.workers import upstream_error

router = APIRouter(route_class=StrictJSONRoute)


@router.post("/v1/images/generations")
async def create_image(body: ImageGenerationRequest, request: Request) -> Response:
    served = request.app.state.registry.resolve(body.model, Modality.image,
                                                "/v1/images/generations", request.state.key)
    assert served.entry.image is not None
    resolve_image_request(body, served.entry.image)  # a 400 here, before any GPU time
    await request.app.state.metering.admit(request, served)
    upstream = body.model_dump(exclude_none=True)
    upstream["model"] = served.entry.id
    send = served.worker.send(
        "/v1/images/generations", upstream,
        {"X-Request-Id": worker_request_id(request.scope)},
        timeout=request.app.state.config.router.timeouts.image_s,
    )
    try:
        # A client that leaves cancels the worker's job: the dropped connection tells it.
        response = await unless_disconnected(request, send)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    if response.status_code != 200:
        raise upstream_error(response)
    data = response.json()
    m = meter(request)
    m.usage, m.images = data.get("usage") or {}, len(data.get("data") or ())
    return JSONResponse(data)
