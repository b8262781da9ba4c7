"""One request's own state: its id, its key and its meter, in one typed object.

The middleware builds it as the request enters (`middleware/request_id.py` opens it, auth sets
the key), routes receive it through the `Ctx` dependency (`dependencies.py`), and when the
request ends `middleware/metering.py` hands its meter to the ledger and the metrics.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

from serving.router.keys import Principal
from serving.upstream.served import Served

_SCOPE_KEY = "request_context"


@dataclass
class Ticket:
    """What admission let in (`Metering.admit`): one of the model's slots of requests in
    flight, and `tokens` reserved in the key's budget. Given back when the request ends."""

    served: Served
    endpoint: str  # the route's path, as admitted
    tokens: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # x-ratelimit-*


@dataclass
class Meter:
    """What one request used, filled in by its route and read when it ends."""

    start: float = field(default_factory=time.perf_counter)
    usage: dict[str, Any] = field(default_factory=dict)  # as the client sees it (normalised)
    images: int = 0
    characters: int = 0
    audio_seconds: float = 0.0
    first_token_at: float | None = None
    # A streamed answer that ends before its last event: the client left (or the worker did).
    incomplete: bool = False
    status_override: int | None = None

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()


@dataclass
class RequestContext:
    request_id: str
    client_sent_id: bool  # the id is the client's own x-request-id
    meter: Meter = field(default_factory=Meter)
    # Set by auth; None only on the paths that need no key (/health, /ready).
    key: Principal | None = None
    # Set once admitted (`call_worker`); settled when the request ends.
    ticket: Ticket | None = None

    def worker_request_id(self) -> str:
        """The id forwarded to the worker: ours, or the client's with a suffix so it is unique
        (a client may send the same id twice)."""
        if not self.client_sent_id:
            return self.request_id
        return f"{self.request_id}-{secrets.token_hex(4)}"


def open_context(scope: Scope, request_id: str, client_sent_id: bool) -> RequestContext:
    """The request's context, created once by the outermost middleware."""
    ctx = RequestContext(request_id, client_sent_id)
    scope.setdefault("state", {})[_SCOPE_KEY] = ctx
    return ctx


def context_of(scope: Scope) -> RequestContext:
    """The context `open_context` put in this request's scope: the one place it is read."""
    return scope["state"][_SCOPE_KEY]
