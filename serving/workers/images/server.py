"""The image worker's HTTP side: OpenAI's /v1/images/generations and, on a model with the
`edits` capability, /v1/images/edits (multipart, as the router forwards it), over the batcher;
GET /metrics shows how requests were batched."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.config.deployment import ImageInputs
from serving.errors import OpenAIError
from serving.protocol.image_edits import (
    decode_edit_image,
    edit_fields,
    edit_image_part,
    resolve_edit_request,
)
from serving.protocol.images import (
    ImageGenerationRequest,
    ImageParams,
    image_usage,
    resolve_image_request,
)
from serving.workers.app import check_model, worker_app
from serving.workers.diffusion import Cancelled, load_pipeline, prompt_tokens
from serving.workers.images.batcher import Batcher
from serving.workers.images.engine import ImageEngine
from serving.workers.images.metrics import CONTENT_TYPE
from serving.workers.spec import MediaWorkerSpec
from serving.workers.warmup import warm_up_images

# The router checks uploads against its own `router.images` limits first; called directly,
# the worker holds to the defaults.
INPUT_LIMITS = ImageInputs()


async def _run(batcher: Batcher, params: ImageParams, request: Request) -> Response:
    """Queue one request for the batcher and answer with its images."""
    job, future = batcher.submit(params)
    try:
        await unless_disconnected(request, asyncio.shield(future))
    except ClientDisconnected:
        job.cancelled = True  # the pipeline stops at its next step if nobody else waits
        return Response(status_code=499)
    except Cancelled:
        raise OpenAIError(503, "The request was cancelled.", code="cancelled") from None
    return JSONResponse({
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(png).decode()} for png in job.images],
        "usage": image_usage(prompt_tokens(batcher.engine.tokenizer, params.prompt),
                             params.n),
    })


async def _edit_params(spec: MediaWorkerSpec, request: Request) -> ImageParams:
    form = await request.form()
    try:
        fields = edit_fields(form)
        check_model(spec, fields.model)
        part = edit_image_part(form, spec.entry)
        image = await asyncio.to_thread(decode_edit_image, await part.read(),
                                        INPUT_LIMITS.max_image_bytes, INPUT_LIMITS.max_pixels)
        return resolve_edit_request(fields, image, spec.entry)
    finally:
        await form.close()


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    options = spec.entry.image
    assert options is not None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine = ImageEngine(await asyncio.to_thread(load_pipeline, spec),
                             spec.args.max_sequence_length)
        # Compiled: every size x batch the worker can meet, so no request pays a recompile.
        most = max(spec.args.max_batch_size, options.max_n) if spec.args.compile else None
        await asyncio.to_thread(warm_up_images, spec.name, engine, spec.entry, most)
        state["batcher"] = batcher = Batcher(engine, spec.args.max_batch_size)
        runner = asyncio.create_task(batcher.run())
        yield
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    app = worker_app(spec, lifespan)

    @app.post("/v1/images/generations")
    async def generate(body: ImageGenerationRequest, request: Request) -> Response:
        check_model(spec, body.model)
        return await _run(state["batcher"], resolve_image_request(body, options), request)

    @app.post("/v1/images/edits")
    async def edit(request: Request) -> Response:
        return await _run(state["batcher"], await _edit_params(spec, request), request)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state["batcher"].metrics.render(), media_type=CONTENT_TYPE)

    return app
