"""The router's side of a worker: one pool of connections to it, and its failures as OpenAI
errors."""

from __future__ import annotations

from typing import Any

import httpx

from serving.config.deployment import Timeouts
from serving.errors import OpenAIError
from serving.router.worker_transport import AiohttpTransport

RETRY_AFTER_S = "5"


class Worker:
    """A worker process reached over HTTP on loopback; every modality looks the same here."""

    def __init__(self, name: str, base_url: str, timeouts: Timeouts, max_connections: int):
        self.name = name
        self.base_url = base_url
        self.transport = AiohttpTransport(max_connections)
        # For the odd GET (health, metrics) and video jobs; requests go through `send`.
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeouts.chat_s, connect=timeouts.connect_s),
            transport=self.transport,
        )
        self._urls: dict[str, httpx.URL] = {}

    def _url(self, path: str) -> httpx.URL:
        """`path` on this worker, parsed once (parsing is a good part of httpx's cost)."""
        url = self._urls.get(path)
        if url is None:  # as httpx merges a path into its base URL (a prefix stays)
            base = self.client.base_url
            url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
            self._urls[path] = url
        return url

    def unavailable(self) -> OpenAIError:
        return OpenAIError(
            503,
            f"The model worker '{self.name}' is not available right now; retry shortly.",
            code="worker_unavailable",
            headers={"Retry-After": RETRY_AFTER_S},
        )

    async def send(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """POST `body` as JSON (or raw `content`); transport failures become 503 (down) or
        504 (too slow). `timeout` replaces the read timeout for this request (a whole image).
        """
        limits = self.client.timeout if timeout is None else httpx.Timeout(
            timeout, connect=self.client.timeout.connect)
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Straight to the transport: what `AsyncClient.send` adds (cookies, auth, redirects,
        # event hooks) is nothing a worker uses, and cost a tenth of a short chat.
        request = httpx.Request("POST", self._url(path), json=body, content=content,
                                headers=headers, extensions={"timeout": limits.as_dict()})
        try:
            response = await self.transport.handle_async_request(request)
            if not stream:
                try:
                    await response.aread()
                except BaseException:
                    await response.aclose()  # a worker's half-read answer: drop its connection
                    raise
            return response
        except httpx.TimeoutException as e:
            if isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise self.unavailable() from None
            raise OpenAIError(
                504, f"The model worker '{self.name}' took too long to respond.", code="timeout"
            ) from None
        except httpx.TransportError:
            raise self.unavailable() from None

    def move_to(self, base_url: str) -> None:
        """The worker was restarted on another port: send new requests there. Connections
        pooled to the old port only ever reach a dead process, so they fail over as one."""
        self.base_url = base_url
        self.client.base_url = httpx.URL(base_url)
        self._urls = {}

    async def healthy(self) -> bool:
        try:
            r = await self.client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def aclose(self) -> None:
        await self.client.aclose()


def upstream_error(response: httpx.Response) -> OpenAIError:
    """A worker's own error reply, re-worded into the envelope with a string-or-null `code`."""
    status = response.status_code
    message, param = f"The model worker answered HTTP {status}.", None
    try:
        err = response.json().get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            message = err
    except (ValueError, AttributeError):
        pass
    if status >= 500:
        # The worker failed, not the request; 503 stays 503 so clients retry it.
        return OpenAIError(503 if status == 503 else 502, f"The model worker failed: {message}",
                           headers={"Retry-After": RETRY_AFTER_S} if status == 503 else None)
    return OpenAIError(status, message, param=param)
