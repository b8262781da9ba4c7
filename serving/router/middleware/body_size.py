"""A cap on request bodies: a 413 envelope before a too-big body is read into memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import OpenAIError, error_response


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    error: OpenAIError  # the 413 a body over `max_bytes` gets


def body_limit(max_bytes: int) -> BodyLimit:
    return BodyLimit(max_bytes, OpenAIError(
        413, f"The request body is larger than the {max_bytes} bytes allowed.",
        code="request_too_large"))


@dataclass(frozen=True)
class BodyLimits:
    default: BodyLimit
    per_path: Mapping[str, BodyLimit]  # paths with limits of their own


class BodySizeLimitMiddleware:
    """Rejects a body over its limit from its Content-Length at once, and a chunked one as
    soon as it passes the limit. Paths in `per_path` have limits of their own (transcription
    uploads: the largest file a model takes); the one error is theirs too. `limits()` gives
    them as the deployment now has them (a reload may change them)."""

    def __init__(self, app: ASGIApp, limits: Callable[[], BodyLimits]):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits = self.limits()
        limit = limits.per_path.get(scope["path"], limits.default)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit.max_bytes:
            return await error_response(scope["path"], limit.error)(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit.max_bytes:
                # FastAPI passes HTTPExceptions from body parsing through unchanged; the error
                # handlers answer with the envelope they carry.
                raise HTTPException(413) from limit.error
            return message

        await self.app(scope, limited, send)
