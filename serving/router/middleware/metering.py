"""Every authenticated request is metered once it has ended, a streamed one at its last byte."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.router.context import context_of
from serving.router.metering import Metering, endpoint_label


class MeteringMiddleware:
    """Wraps every authenticated /v1/ request; sits inside auth, which sets the key. Adds the
    rate-limit headers of the request's admission ticket and hands the request to
    `Metering.finish`, which gives the ticket back."""

    def __init__(self, app: ASGIApp, metering: Metering):
        self.app = app
        self.metering = metering

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ctx = context_of(scope)
        if ctx.key is None:
            return await self.app(scope, receive, send)
        status = 500

        async def send_with_limits(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if ctx.ticket is not None and ctx.ticket.headers:
                    message["headers"] = [*message.get("headers", []), *ctx.ticket.headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            await self.metering.finish(ctx, endpoint_label(scope), status)
