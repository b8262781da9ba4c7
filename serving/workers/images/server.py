"""The image worker's HTTP side: OpenAI's /v1/images/generations over the batcher."""

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
from serving.errors import OpenAIError
from serving.protocol.images import ImageGenerationRequest, image_usage, resolve_image_request
from serving.workers.app import check_model, worker_app
from serving.workers.diffusion import Cancelled, load_pipeline, prompt_tokens
from serving.workers.images.batcher import Batcher
from serving.workers.images.engine import ImageEngine
from serving.workers.spec import MediaWorkerSpec
from serving.workers.warmup import warm_up_images


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    options = spec.entry.image
    assert options is not None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine = ImageEngine(await asyncio.to_thread(load_pipeline, spec),
                             spec.args.max_sequence_length)
        await asyncio.to_thread(warm_up_images, spec.name, engine, spec.entry)
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
        params = resolve_image_request(body, options)
        batcher: Batcher = state["batcher"]
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

    return app
