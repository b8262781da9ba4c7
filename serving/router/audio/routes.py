"""POST /v1/audio/speech and POST /v1/audio/transcriptions, served by audio workers.

The router checks each request against the catalog, then passes the body on as it came (the
transcription upload is forwarded byte for byte, not re-encoded) and relays the worker's
answer as it arrives: streamed audio, server-sent events, or a whole transcript.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from serving.config import Modality
from serving.protocol.audio import (
    AUDIO_SECONDS_HEADER,
    SpeechRequest,
    check_audio_file,
    file_too_large,
    resolve_speech_request,
    resolve_transcription,
    transcription_fields,
)
from serving.router.call_worker import CallWorker
from serving.router.context import Meter
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.middleware.body_size import BodyLimit
from serving.router.multipart import read_multipart
from serving.router.registry import Registry

router = APIRouter(route_class=StrictJSONRoute)

TRANSCRIPTIONS = "/v1/audio/transcriptions"

# Room for the multipart framing and the other fields around the file itself.
FORM_OVERHEAD_BYTES = 1024 * 1024


def _relay(response: httpx.Response, m: Meter) -> Response:
    """The worker's answer, passed on as it arrives."""
    m.audio_seconds = float(response.headers.get(AUDIO_SECONDS_HEADER) or 0)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    return StreamingResponse(body(), media_type=response.headers.get("content-type"))


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechRequest, ctx: Ctx, registry: RegistryDep,
                        config: ConfigDep, call: CallWorker) -> Response:
    served = registry.resolve(body.model, Modality.speech, "/v1/audio/speech", ctx.key)
    assert served.entry.speech is not None
    resolve_speech_request(body, served.entry.speech)
    upstream = body.model_dump(exclude_none=True)
    upstream["model"] = served.entry.id
    response = await call(served, "/v1/audio/speech", upstream, stream=True,
                          timeout=config.router.timeouts.audio_s)
    ctx.meter.characters = len(body.input)
    return _relay(response, ctx.meter)


def upload_limit(registry: Registry) -> BodyLimit | None:
    """The body cap of a transcription: the largest file a configured model takes, plus the
    multipart framing around it (the body-size middleware applies it as the body arrives)."""
    largest = max((s.entry.transcription.max_file_bytes for s in registry.served
                   if s.entry.transcription is not None), default=None)
    if largest is None:
        return None
    return BodyLimit(largest + FORM_OVERHEAD_BYTES, file_too_large(largest))


@router.post(TRANSCRIPTIONS)
async def create_transcription(request: Request, ctx: Ctx, registry: RegistryDep,
                               config: ConfigDep, call: CallWorker) -> Response:
    # Capped by the body-size middleware (`upload_limit`).
    upload = await read_multipart(request, "Transcriptions", "file")
    form = upload.form
    try:
        fields = transcription_fields(form)
        served = registry.resolve(fields.model, Modality.transcription,
                                  TRANSCRIPTIONS, ctx.key)
        options = served.entry.transcription
        check_audio_file(form, options)
        resolve_transcription(fields, options)
    finally:
        await form.close()
    # The worker gets the upload as it came; it knows its model by any of its names. A
    # transcription answers once it is done: a client that leaves before cancels it.
    response = await call(served, TRANSCRIPTIONS, content=upload.raw,
                          content_type=upload.content_type, stream=True,
                          timeout=config.router.timeouts.audio_s)
    return _relay(response, ctx.meter)

