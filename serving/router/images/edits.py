"""POST /v1/images/edits: check the form and its image against the catalog, forward the upload
as it came, pass the answer back."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serving.config import Modality
from serving.protocol.image_edits import (
    decode_edit_image,
    edit_fields,
    edit_image_part,
    resolve_edit_request,
)
from serving.router.call_worker import CallWorker
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.multipart import read_multipart

router = APIRouter()

EDITS = "/v1/images/edits"


@router.post(EDITS)
async def edit_image(request: Request, ctx: Ctx, registry: RegistryDep, config: ConfigDep,
                     call: CallWorker) -> Response:
    upload = await read_multipart(request, "Image edits", "image")  # under max_body_bytes
    limits = config.router.images
    try:
        fields = edit_fields(upload.form)
        served = registry.resolve(fields.model, Modality.image, EDITS, ctx.key,
                                  capability="edits")
        part = edit_image_part(upload.form, served.entry)
        image = await asyncio.to_thread(decode_edit_image, await part.read(),
                                        limits.max_image_bytes, limits.max_pixels)
        resolve_edit_request(fields, image, served.entry)  # a 400 here, before any GPU time
    finally:
        await upload.form.close()
    # The worker gets the upload as it came (it knows its model by any of its names) and
    # decodes the image again; a client that leaves before the answer cancels the edit.
    response = await call(served, EDITS, content=upload.raw, content_type=upload.content_type,
                          timeout=config.router.timeouts.image_s)
    data = response.json()
    ctx.meter.usage, ctx.meter.images = data.get("usage") or {}, len(data.get("data") or ())
    return JSONResponse(data)
