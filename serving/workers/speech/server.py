"""The speech worker's HTTP side: OpenAI's /v1/audio/speech, streamed chunk by chunk.

Long input is split at sentence boundaries; each chunk is synthesised and encoded as soon as
the previous one has left, so the first audio bytes reach the client before the whole text is
spoken. `stream_format: sse` wraps the same bytes in OpenAI's `speech.audio.delta` events.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.responses import StreamingResponse

from serving.media.audio import CONTENT_TYPES, AudioEncoder
from serving.protocol.audio import SpeechParams, SpeechRequest, resolve_speech_request
from serving.sse import sse_event
from serving.workers.app import check_model, worker_app
from serving.workers.spec import MediaWorkerSpec
from serving.workers.speech.engines import SpeechEngine, load_engine, split_sentences
from serving.workers.warmup import warm_up_speech


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    options = spec.entry.speech
    assert options is not None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        model_dir = None if spec.entry.engine == "hibari" else spec.model_path
        state["engine"] = await asyncio.to_thread(
            load_engine, spec.entry.engine, model_dir, threads=spec.args.threads,
            providers=spec.args.providers, lang=spec.args.lang)
        await asyncio.to_thread(warm_up_speech, spec.name, state["engine"], spec.entry)
        yield

    app = worker_app(spec, lifespan)
    # One synthesis at a time (engines are not all thread-safe); requests interleave by chunk.
    lock = threading.Lock()

    def synthesize(engine: SpeechEngine, text: str, params: SpeechParams) -> Any:
        with lock:
            return engine.synthesize(text, params.voice, params.speed)

    async def audio(params: SpeechParams) -> AsyncIterator[bytes]:
        engine: SpeechEngine = state["engine"]
        encoder = AudioEncoder(params.format, engine.sample_rate)
        yield encoder.header()
        for chunk in split_sentences(params.text, spec.args.max_chunk_chars):
            samples = await asyncio.to_thread(synthesize, engine, chunk, params)
            if data := encoder.encode(samples):
                yield data
        yield encoder.close()

    async def events(params: SpeechParams) -> AsyncIterator[bytes]:
        async for data in audio(params):
            if data:
                yield sse_event({"type": "speech.audio.delta",
                                 "audio": base64.b64encode(data).decode()})
        yield sse_event({"type": "speech.audio.done", "usage": {
            "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
            "input_characters": len(params.text)}})

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest) -> StreamingResponse:
        check_model(spec, body.model)
        params = resolve_speech_request(body, options)
        if params.sse:
            return StreamingResponse(events(params), media_type="text/event-stream")
        return StreamingResponse(audio(params), media_type=CONTENT_TYPES[params.format])

    return app
