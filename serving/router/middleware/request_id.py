"""Where every request enters: its id, its context, and the access log line when it ends.

Every response carries `x-request-id`: the client's own when it is a sane token, otherwise a
generated one. The id is in a context variable for the duration of the request so every log
line the router writes for it carries it, and it is forwarded to the worker.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.logs import request_id_var
from serving.router.context import open_context

access_log = logging.getLogger("serving.access")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdMiddleware:
    """The outermost middleware: opens the request's context and writes the access log."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        if sent is not None and _SANE_ID.match(sent):
            rid, client_sent = sent.decode(), True
        else:
            rid, client_sent = new_request_id(), False
        ctx = open_context(scope, rid, client_sent)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            tokens = "".join(
                f" {k}={v}" for k, v in ctx.meter.usage.items() if isinstance(v, int | float)
            )
            access_log.info(
                "%s %s %d %.0fms key=%s%s", scope["method"], scope["path"], status,
                (time.perf_counter() - start) * 1000, ctx.key.name if ctx.key else "-", tokens,
            )
            request_id_var.reset(token)
