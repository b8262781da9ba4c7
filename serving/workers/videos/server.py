"""The video worker's HTTP side.

The public video API is asynchronous and its jobs are kept by the router; this worker renders
one job per request: `POST /v1/videos/render` answers with server-sent events, `progress`
while denoising and a final `completed` (carrying the MP4, base64) or `failed`. If the router
goes away mid-render (a deleted job, a shutdown), the render stops at its next step.

The MP4 travels back in the answer rather than through a path the router names, so the worker
may run on another node than the router (`workers.videos.endpoints`) with nothing shared
between them; the router puts it in the artifact store. A video is a few MB, small next to the
minutes it takes to render.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from serving.protocol.videos import VideoParams
from serving.sse import sse_event
from serving.workers.app import worker_app
from serving.workers.diffusion import Cancelled, load_pipeline
from serving.workers.spec import MediaWorkerSpec
from serving.workers.videos.engine import VideoEngine
from serving.workers.warmup import warm_up_video

log = logging.getLogger("serving.workers.videos")


class RenderRequest(BaseModel):
    params: VideoParams


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    state: dict[str, VideoEngine] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state["engine"] = engine = VideoEngine(await asyncio.to_thread(load_pipeline, spec))
        await asyncio.to_thread(warm_up_video, spec.name, engine, spec.entry)
        yield

    app = worker_app(spec, lifespan)

    @app.post("/v1/videos/render")
    async def render(body: RenderRequest) -> StreamingResponse:
        return StreamingResponse(_render(state["engine"], body), media_type="text/event-stream")

    return app


async def _render(engine: VideoEngine, body: RenderRequest) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    progress: asyncio.Queue[int] = asyncio.Queue()
    cancelled = False

    def on_progress(p: int) -> None:
        loop.call_soon_threadsafe(progress.put_nowait, p)

    def render() -> tuple[int, bytes]:
        with tempfile.TemporaryDirectory(prefix="serving-render-") as tmp:
            output = Path(tmp) / "video.mp4"
            frames = engine.render(body.params, output, on_progress, lambda: cancelled)
            return frames, output.read_bytes()

    task = asyncio.ensure_future(asyncio.to_thread(render))
    try:
        while not task.done():
            getter = asyncio.ensure_future(progress.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield sse_event({"status": "in_progress", "progress": getter.result()})
            else:
                getter.cancel()
        try:
            frames, mp4 = task.result()
        except Cancelled:
            return
        except Exception as e:
            log.exception("render failed")
            yield sse_event({"status": "failed",
                             "error": {"code": "render_failed", "message": str(e) or repr(e)}})
            return
        yield sse_event({"status": "completed", "progress": 100, "frames": frames,
                         "mp4": base64.b64encode(mp4).decode()})
    finally:
        cancelled = True  # nobody is listening any more: stop at the next step
        # ...where the render raises Cancelled, which nobody awaits any more: take it here.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
