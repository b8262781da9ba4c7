"""The transcription worker's HTTP side: OpenAI's multipart /v1/audio/transcriptions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.protocol.audio import (
    AUDIO_SECONDS_HEADER,
    TranscriptionParams,
    check_audio_file,
    resolve_transcription,
    transcription_fields,
)
from serving.workers.app import check_model, worker_app
from serving.workers.spec import MediaWorkerSpec
from serving.workers.transcription.engine import (
    SAMPLE_RATE,
    Transcriber,
    Transcript,
    decode,
    to_srt,
    to_verbose_json,
    to_vtt,
)
from serving.workers.warmup import warm_up_transcription


def _run(segments: Iterator[dict[str, Any]]) -> Transcript:
    """Drain the engine's generator; its return value is the transcript."""
    while True:
        finished, value = _step(segments)
        if finished:
            return value


def _step(segments: Iterator[dict[str, Any]]) -> tuple[bool, Any]:
    """The next segment, or the transcript at the end (StopIteration cannot cross a Future)."""
    try:
        return False, next(segments)
    except StopIteration as done:
        return True, done.value


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    options = spec.entry.transcription
    assert options is not None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state["engine"] = await asyncio.to_thread(
            Transcriber, str(spec.model_path), spec.args, spec.device)
        silence = TranscriptionParams(language=options.languages[0], prompt=None,
                                      temperature=0.0, response_format="json", words=False,
                                      segments=False, stream=False)
        await asyncio.to_thread(warm_up_transcription, spec.name,
                                lambda audio: _run(state["engine"].transcribe(audio, silence)))
        # CTranslate2 runs `num_workers` transcriptions in parallel; more would only queue
        # inside it while holding a thread each.
        state["slots"] = asyncio.Semaphore(spec.args.num_workers)
        yield

    app = worker_app(spec, lifespan)

    @app.post("/v1/audio/transcriptions")
    async def transcribe(request: Request) -> Response:
        form = await request.form()
        fields = transcription_fields(form)
        check_model(spec, fields.model)
        upload = check_audio_file(form, options)
        params = resolve_transcription(fields, options)
        audio = await asyncio.to_thread(decode, await upload.read())
        seconds = {AUDIO_SECONDS_HEADER: f"{len(audio) / SAMPLE_RATE:.3f}"}
        engine: Transcriber = state["engine"]
        if params.stream:
            return StreamingResponse(_stream(engine, state["slots"], audio, params),
                                     media_type="text/event-stream", headers=seconds)
        async with state["slots"]:
            try:
                transcript = await unless_disconnected(
                    request, asyncio.to_thread(_run, engine.transcribe(audio, params)))
            except ClientDisconnected:
                return Response(status_code=499)
        response = _respond(transcript, params)
        response.headers.update(seconds)
        return response

    return app


def _respond(t: Transcript, params: TranscriptionParams) -> Response:
    fmt = params.response_format
    if fmt == "text":
        return PlainTextResponse(t.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(t))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(t), media_type="text/vtt")
    if fmt == "verbose_json":
        return JSONResponse(to_verbose_json(t, params))
    return JSONResponse({"text": t.text, "usage": t.usage()})


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _stream(engine: Transcriber, slots: asyncio.Semaphore, audio: Any,
                  params: TranscriptionParams) -> AsyncIterator[bytes]:
    """OpenAI's transcription events: a `transcript.text.delta` per segment, then `done`."""
    async with slots:
        segments = engine.transcribe(audio, params)
        while True:
            finished, value = await asyncio.to_thread(_step, segments)
            if finished:
                transcript: Transcript = value
                break
            yield _event({"type": "transcript.text.delta", "delta": value["text"]})
        yield _event({"type": "transcript.text.done", "text": transcript.text,
                      "usage": transcript.usage()})
