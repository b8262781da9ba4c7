"""One request's trip to its worker: admit, send with the request id, watch for the client
leaving, map the worker's errors. Every route that calls a worker goes through `CallWorker`.

Admission takes one of the model's in-flight slots and the key's rate-limit tokens, and the
ticket it hands back lives on the request's context; `middleware/metering.py` gives it back and
writes the ledger record when the request ends, whatever happens after admission. A route
admits before any work the limits should prevent (fetching a chat's image URLs), then sends.
A client that leaves before the worker answers cancels the call: the dropped upstream
connection tells the worker to stop (vLLM aborts the generation, a media worker its job), and
the request ends as a 499.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from starlette.responses import Response

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.router.context import RequestContext, Ticket
from serving.router.dependencies import Ctx, MeteringDep
from serving.router.metering import CLIENT_CLOSED, Metering, endpoint_label
from serving.upstream.errors import upstream_error
from serving.upstream.served import Served


class WorkerCall:
    """Bound to one request: its context, its connection (to see the client leave), metering."""

    def __init__(self, request: Request, ctx: RequestContext, metering: Metering):
        self.request = request
        self.ctx = ctx
        self.metering = metering

    async def admit(self, served: Served, tokens: int = 0) -> Ticket:
        """Take a slot of `served` and `tokens` of the key's budget, or raise the 503/429.
        Once per request; the request's context holds the ticket until the request ends."""
        assert self.ctx.ticket is None, "a request is admitted once"
        assert self.ctx.key is not None  # only authenticated requests reach a route
        self.ctx.ticket = await self.metering.admit(
            self.ctx.key, served, endpoint_label(self.request.scope), tokens)
        return self.ctx.ticket

    async def __call__(
        self,
        served: Served,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        tokens: int = 0,
        content: bytes | None = None,
        content_type: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """The worker's 200 answer (with `stream`, its headers and an unread body the caller
        must close), or an OpenAIError; ClientDisconnected if the client left first. Admits
        the request (`tokens`) first unless the route already did."""
        if self.ctx.ticket is None:
            await self.admit(served, tokens)
        send = served.worker.send(
            path, body, {"X-Request-Id": self.ctx.worker_request_id()}, content=content,
            content_type=content_type, stream=stream, timeout=timeout)
        # Only the wait for the answer (for a stream, its headers) is raced here; once a stream
        # is relayed, Starlette cancels the relay when the client leaves.
        response = await unless_disconnected(self.request, send)
        if response.status_code != 200:
            if stream:
                await response.aread()
                await response.aclose()
            raise upstream_error(response)
        return response


async def _worker_call(request: Request, ctx: Ctx, metering: MeteringDep) -> WorkerCall:
    return WorkerCall(request, ctx, metering)


CallWorker = Annotated[WorkerCall, Depends(_worker_call)]


def client_closed(_: Request, __: ClientDisconnected) -> Response:
    """The answer nobody reads any more: metered and logged as a 499."""
    return Response(status_code=CLIENT_CLOSED)
