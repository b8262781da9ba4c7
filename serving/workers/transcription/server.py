"""The transcription worker's HTTP side: OpenAI's multipart /v1/audio/transcriptions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.protocol.audio import (
    AUDIO_SECONDS_HEADER,
    TranscriptionParams,
    check_audio_file,
    resolve_transcription,
    transcription_fields,
)
from serving.sse import sse_event
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


def _drain(segments: Iterator[dict[str, Any]]) -> Transcript:
    """Run the engine's generator to its end, on this thread; its return value is the
    transcript (for the warm-up, which nobody can leave)."""
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


class Transcriptions:
    """Runs transcriptions on the engine, `num_workers` at a time, and counts them.

    Whisper runs on a thread one segment at a time, so a transcription nobody waits for any
    more stops at the end of the segment in progress (a thread cannot be interrupted) and
    gives its slot back only then. `/metrics` shows how many run and how many were stopped.
    """

    def __init__(self, engine: Transcriber, slots: int):
        self.engine = engine
        # CTranslate2 runs `num_workers` transcriptions in parallel; more would only queue
        # inside it while holding a thread each.
        self.slots = asyncio.Semaphore(slots)
        self.registry = CollectorRegistry(auto_describe=True)
        self.running = Gauge("serving_transcriptions_running", "Transcriptions using the "
                             "engine now.", registry=self.registry)
        self.cancelled = Counter("serving_transcriptions_cancelled", "Transcriptions stopped "
                                 "before their end because their client left.",
                                 registry=self.registry)

    async def run(self, audio: Any, params: TranscriptionParams
                  ) -> AsyncIterator[tuple[bool, Any]]:
        """(False, segment) for each segment as Whisper finishes it, then (True, transcript)."""
        async with self.slots:
            segments = self.engine.transcribe(audio, params)
            self.running.inc()
            try:
                while True:
                    step = asyncio.ensure_future(asyncio.to_thread(_step, segments))
                    try:
                        finished, value = await asyncio.shield(step)
                    except asyncio.CancelledError:
                        await asyncio.wait({step})  # the segment in progress ends first
                        raise
                    if finished:
                        break
                    yield False, value
            except (asyncio.CancelledError, GeneratorExit):  # nobody waits for it any more
                self.cancelled.inc()
                with contextlib.suppress(ValueError):  # still running: it ends on its own
                    segments.close()
                raise
            finally:
                self.running.dec()
        yield True, value

    async def transcript(self, audio: Any, params: TranscriptionParams) -> Transcript:
        async with contextlib.aclosing(self.run(audio, params)) as steps:
            async for finished, value in steps:
                if finished:
                    return value
        raise AssertionError("run() ends with the transcript")


def create_app(spec: MediaWorkerSpec) -> FastAPI:
    options = spec.entry.transcription
    assert options is not None
    state: dict[str, Transcriptions] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine = await asyncio.to_thread(Transcriber, str(spec.model_path), spec.args,
                                         spec.device)
        silence = TranscriptionParams(language=options.languages[0], prompt=None,
                                      temperature=0.0, response_format="json", words=False,
                                      segments=False, stream=False)
        await asyncio.to_thread(warm_up_transcription, spec.name,
                                lambda audio: _drain(engine.transcribe(audio, silence)))
        state["transcriptions"] = Transcriptions(engine, spec.args.num_workers)
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
        transcriptions = state["transcriptions"]
        if params.stream:
            return StreamingResponse(_stream(transcriptions, audio, params),
                                     media_type="text/event-stream", headers=seconds)
        try:
            transcript = await unless_disconnected(
                request, transcriptions.transcript(audio, params))
        except ClientDisconnected:
            return Response(status_code=499)
        response = _respond(transcript, params)
        response.headers.update(seconds)
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state["transcriptions"].registry),
                        media_type=CONTENT_TYPE_LATEST)

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


async def _stream(transcriptions: Transcriptions, audio: Any,
                  params: TranscriptionParams) -> AsyncIterator[bytes]:
    """OpenAI's transcription events: a `transcript.text.delta` per segment, then `done`."""
    async with contextlib.aclosing(transcriptions.run(audio, params)) as steps:
        async for finished, value in steps:
            if finished:
                yield sse_event({"type": "transcript.text.done", "text": value.text,
                                 "usage": value.usage()})
            else:
                yield sse_event({"type": "transcript.text.delta", "delta": value["text"]})
