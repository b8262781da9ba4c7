"""Endpoints OpenAI has and this API does not: a clean envelope saying what to use instead."""

from __future__ import annotations

from fastapi import APIRouter, Request

from serving.errors import OpenAIError

router = APIRouter()

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# path (prefix) -> what the client should do instead
UNSUPPORTED: dict[str, str] = {
    "/v1/embeddings": "Embeddings are not supported by this API for any model.",
    "/v1/audio/translations": "Audio translations are not supported; transcribe with "
    "/v1/audio/transcriptions, then translate the text with /v1/chat/completions.",
    "/v1/fine_tuning": "Fine-tuning is not supported by this API.",
    "/v1/fine-tuning": "Fine-tuning is not supported by this API.",
    "/v1/assistants": "The Assistants API is not supported; use /v1/chat/completions with "
    "tools.",
    "/v1/threads": "The Assistants API (threads and runs) is not supported; use "
    "/v1/chat/completions with tools.",
    "/v1/runs": "The Assistants API (threads and runs) is not supported; use "
    "/v1/chat/completions with tools.",
    "/v1/batches": "The Batch API is not supported; send requests to /v1/chat/completions "
    "directly (they are batched on the GPU).",
    "/v1/files": "File uploads are not supported; send content inline in the request.",
    "/v1/images/variations": "Image variations are not supported; edit the image with "
    "/v1/images/edits (a prompt such as 'the same scene, another take'), or generate with "
    "/v1/images/generations.",
    # POST /v1/responses is served (text/routes.py); the rest of that API needs stored
    # responses.
    "/v1/responses": "Responses are not stored by this API, so they cannot be listed, "
    "retrieved, cancelled or deleted; POST /v1/responses with the whole conversation in "
    "`input`.",
    "/v1/moderations": "Moderations are not supported by this API.",
    "/v1/videos/edits": "Video edits are not supported; create a new video with /v1/videos.",
    "/v1/videos/extensions": "Video extensions are not supported; create a new video with "
    "/v1/videos.",
    "/v1/videos/characters": "Video characters are not supported by this API.",
}


def _handler(message: str):
    async def unsupported(request: Request) -> None:
        raise OpenAIError(400, message, code="unsupported_endpoint")

    return unsupported


for _path, _message in UNSUPPORTED.items():
    router.add_api_route(_path, _handler(_message), methods=_METHODS, include_in_schema=False)
    router.add_api_route(_path + "/{rest:path}", _handler(_message), methods=_METHODS,
                         include_in_schema=False)
