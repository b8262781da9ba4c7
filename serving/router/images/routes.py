"""POST /v1/images/generations: validate against the catalog, forward, pass the answer back."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from serving.config import Modality
from serving.protocol.images import ImageGenerationRequest, resolve_image_request
from serving.router.call_worker import CallWorker
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


@router.post("/v1/images/generations")
async def create_image(body: ImageGenerationRequest, ctx: Ctx, registry: RegistryDep,
                       config: ConfigDep, call: CallWorker) -> Response:
    served = registry.resolve(body.model, Modality.image, "/v1/images/generations", ctx.key)
    assert served.entry.image is not None
    resolve_image_request(body, served.entry.image)  # a 400 here, before any GPU time
    upstream = body.model_dump(exclude_none=True)
    upstream["model"] = served.entry.id
    response = await call(served, "/v1/images/generations", upstream,
                          timeout=config.router.timeouts.image_s)
    data = response.json()
    ctx.meter.usage, ctx.meter.images = data.get("usage") or {}, len(data.get("data") or ())
    return JSONResponse(data)
