"""A cap on request bodies: a 413 envelope before a too-big body is read into memory."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import OpenAIError


class BodySizeLimitMiddleware:
    """Rejects a body over `max_bytes` from its Content-Length at once, and a chunked one as
    soon as it passes the limit. Paths in `exempt` enforce their own (larger) limits."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    def _message(self) -> str:
        return f"The request body is larger than the {self.max_bytes} bytes allowed."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = OpenAIError(413, self._message(), code="request_too_large")
            return await error.response()(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes HTTPExceptions from body parsing through unchanged.
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)
