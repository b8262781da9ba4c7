"""The router's connections to its workers: an httpx transport on aiohttp's connection pool.

Why not httpx's own (httpcore): its pool looks at every pooled connection on every request,
with a readability poll (a system call) each. With a few dozen keep-alive connections to a
worker that is ~2 ms of CPU per request, the largest cost of a short chat in the router
(`scripts/bench_router.py`: one router process served 280 short chats/s, every second sample
in httpcore). aiohttp keeps idle connections in a queue per host and takes one in O(1).

The router keeps speaking httpx (`Worker.send` returns an `httpx.Response`, the relay reads
`aiter_raw`, errors are httpx's `TransportError`s), so only this module knows about aiohttp:
its errors are raised as the httpx errors httpcore would have raised, with the same meaning
(ConnectError/ConnectTimeout: the worker cannot be reached; ReadTimeout: too slow; ReadError/
RemoteProtocolError: it broke off). A response that is closed before its end closes its
connection, so a worker sees a client that left (vLLM then aborts the generation).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from multidict import CIMultiDict

KEEPALIVE_S = 4.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    """At most `max_connections` connections, all kept alive between requests."""

    def __init__(self, max_connections: int):
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        """The pool of this event loop: made on first use, since aiohttp's must be made in
        the loop that uses it (tests drive one app from several loops in turn)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            if self._session is not None:
                self._session.detach()  # its loop has ended, and its connections with it
            self._loop = loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, limit_per_host=0,
                    # Idle connections are closed here before the worker's server closes
                    # them (uvicorn's keep-alive, vLLM's too, is 5 s), so a request is never
                    # written into a connection the worker is closing.
                    keepalive_timeout=KEEPALIVE_S),
                auto_decompress=False,  # bytes are relayed as they come, like httpx's raw
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        pool, connect = t.get("pool"), t.get("connect")
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=t.get("read"), sock_connect=connect,
            # aiohttp's `connect` is the wait for a free connection plus the connect itself.
            connect=None if pool is None or connect is None else pool + connect)
        try:
            response = await self._session_here().request(
                request.method, str(request.url), data=request.content,
                headers=CIMultiDict(request.headers.multi_items()), timeout=timeout,
                allow_redirects=False, compress=None)
        except _FAILURES as e:
            raise _as_httpx(e, request) from e
        return httpx.Response(response.status, headers=list(response.raw_headers),
                              stream=_Body(response, request), request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


class _Body(httpx.AsyncByteStream):
    """The response body as aiohttp reads it, in whatever pieces arrive."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self.response = response
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.content.iter_any():
                yield data
        except _FAILURES as e:
            raise _as_httpx(e, self.request) from e

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()  # back to the pool
        else:
            self.response.close()  # left before its end: the worker must see it


_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _as_httpx(error: Exception, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's error as the httpx error httpcore raises for the same failure."""
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(error, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)
