"""One process serving a worker's model, reached over HTTP on its own pool of connections
(aiohttp's, under httpx: `transport.py`)."""

from __future__ import annotations

import httpx

from serving.config.deployment import Timeouts
from serving.upstream.transport import AiohttpTransport


class Replica:
    """One process serving a worker's model, reached over HTTP with its own connections."""

    def __init__(self, name: str, index: int | None, base_url: str, timeouts: Timeouts,
                 max_connections: int, health_path: str = "/health"):
        self.name = name
        self.index = index  # its `replica` label; None for a worker's only process
        self.base_url = base_url
        self.health_path = health_path
        self.in_flight = 0
        self.up = True  # as the last health check or connection attempt found it
        self.transport = AiohttpTransport(max_connections)
        # Builds requests and serves the odd GET (health, metrics); `send` sends them.
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeouts.chat_s, connect=timeouts.connect_s),
            transport=self.transport,
        )
        self._urls: dict[str, httpx.URL] = {}

    def url(self, path: str) -> httpx.URL:
        """`path` on this replica, parsed once (parsing is a good part of httpx's cost)."""
        url = self._urls.get(path)
        if url is None:  # as httpx merges a path into its base URL (a prefix stays)
            base = self.client.base_url
            url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
            self._urls[path] = url
        return url

    async def send(self, request: httpx.Request, stream: bool) -> httpx.Response:
        """Straight to the transport: what `AsyncClient.send` adds (cookies, auth, redirects,
        event hooks) is nothing a worker uses, and cost a tenth of a short chat."""
        response = await self.transport.handle_async_request(request)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()  # a half-read answer: drop its connection
                raise
        return response

    def move_to(self, base_url: str) -> None:
        """The replica was restarted on another port: send new requests there. Connections
        pooled to the old port only ever reach a dead process, so they fail over as one."""
        self.base_url = base_url
        self.client.base_url = httpx.URL(base_url)
        self._urls = {}

    async def healthy(self) -> bool:
        try:
            r = await self.client.get(self.health_path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200
