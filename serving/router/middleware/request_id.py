"""Request ids and the access log.

Every response carries `x-request-id`: the client's own when it is a sane token, otherwise a
generated one. The id is in a context variable for the duration of the request so every log
line the router writes for it carries it, and it is forwarded to the worker.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("serving.access")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def worker_request_id(scope: Scope) -> str:
    """The id forwarded to the worker: ours, or the client's with a suffix so it is unique."""
    state = scope.get("state", {})
    rid = state.get("request_id") or new_request_id()
    return rid if state.get("request_id_generated") else f"{rid}-{secrets.token_hex(4)}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        generated = sent is None or not _SANE_ID.match(sent)
        rid = new_request_id() if generated else sent.decode()
        state = scope.setdefault("state", {})
        state["request_id"], state["request_id_generated"] = rid, generated
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
            usage = state.get("usage")
            tokens = "".join(
                f" {k}={v}" for k, v in (usage or {}).items() if isinstance(v, int | float)
            )
            access_log.info(
                "%s %s %d %.0fms key=%s%s", scope["method"], scope["path"], status,
                (time.perf_counter() - start) * 1000, state.get("key_name", "-"), tokens,
            )
            request_id_var.reset(token)
