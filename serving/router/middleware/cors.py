"""CORS as `router.cors_origins` says now: Starlette's CORSMiddleware, made again when a
reload changes the origins. No origins: no CORS headers at all (a server-to-server API)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class ConfiguredCORS:
    def __init__(self, app: ASGIApp, origins: Callable[[], Sequence[str]]):
        self.app = app
        self.origins = origins
        self._for: tuple[tuple[str, ...], ASGIApp] = ((), app)

    def _current(self) -> ASGIApp:
        origins = tuple(self.origins())
        if origins != self._for[0]:
            self._for = (origins, CORSMiddleware(
                self.app, allow_origins=origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                expose_headers=["X-Request-Id"]) if origins else self.app)
        return self._for[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._current()(scope, receive, send)
