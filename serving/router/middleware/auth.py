"""API keys, checked against SHA-256 hashes: `Authorization: Bearer <key>` (OpenAI's clients)
or `x-api-key: <key>` (Anthropic's), the same keys with the same models and limits."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import OpenAIError, error_response, speaks_anthropic
from serving.router.context import context_of
from serving.router.keys import KeyStore

# Anthropic's clients send `x-api-key`; the Messages API's 401 names both ways in.
_OR_X_API_KEY = {False: "", True: " or an x-api-key header (x-api-key: YOUR_KEY)"}


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, type="invalid_request_error", code="invalid_api_key")


class AuthMiddleware:
    """Guards every /v1/ path and /metrics; /health, /ready and /openapi.json stay open."""

    def __init__(self, app: ASGIApp, keys: Callable[[], KeyStore]):
        self.app = app
        self.keys = keys  # the keys now: a reload may change them between two requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path == "/metrics"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        header = headers.get(b"authorization")
        if not header and b"x-api-key" in headers:
            header = b"Bearer " + headers[b"x-api-key"]
        if header is None:
            error = _unauthorized(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)"
                + _OR_X_API_KEY[speaks_anthropic(path)] + ".")
        else:
            scheme, _, token = header.decode("latin-1").partition(" ")
            key = self.keys().verify(token.strip()) if scheme.lower() == "bearer" else None
            if key is not None:
                # The name is for logs and the ledger; the hash identifies the owner of
                # resources such as video jobs, whatever the key is named.
                context_of(scope).key = key
                return await self.app(scope, receive, send)
            error = _unauthorized(
                "Incorrect API key provided."
                if scheme.lower() == "bearer"
                else "Only Bearer authentication is supported (Authorization: Bearer YOUR_KEY)"
                + _OR_X_API_KEY[speaks_anthropic(path)] + "."
            )
        await error_response(path, error)(scope, receive, send)
