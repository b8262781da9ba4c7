"""Stop work nobody is waiting for.

A non-streamed request (an image, a transcription) can run for seconds; when its client goes
away the work should stop too. `unless_disconnected` races an awaitable against the client's
`http.disconnect`, so the router can drop its upstream request and a worker can cancel its job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnected (with `work` cancelled) if the client left.

    Only for requests whose body has been read already: then the next ASGI message can only be
    the disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
    if not task.done() or task.cancelled():
        raise ClientDisconnected
    return task.result()
