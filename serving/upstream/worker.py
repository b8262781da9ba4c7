"""A worker as its callers see it (the router's routes, the video dispatchers): its replicas
(`replica.py`), which of them takes a request, and their failures as OpenAI errors.

A worker is one process, or a pool of replicas (`workers.NAME.replicas` or `endpoints`):
- a chat pool is reached through its pool router (the `gateway`: a cache-aware router started
  by the launcher, which picks the replica), so the router sends every request there;
- a media pool is spread here, to the replica with the fewest requests in flight among those
  that pass their health checks (a background loop, `routing.health_check_interval_s`). A
  request that could not connect to its replica is tried on another before any byte of an
  answer exists; one that reached its replica is never sent twice.
Routes see one `Worker` either way: `send` and `stream` pick the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from serving.config.deployment import Timeouts
from serving.errors import OpenAIError
from serving.upstream.errors import unavailable
from serving.upstream.replica import Replica

log = logging.getLogger("serving.upstream")


@dataclass(frozen=True)
class Endpoints:
    """Where a worker's replicas listen, and its pool router (`gateway`) if it has one, with
    the URL of the pool router's own Prometheus metrics if known."""

    replicas: tuple[str, ...]
    gateway: str | None = None
    gateway_metrics: str | None = None


class Worker:
    """A worker reached over HTTP on loopback (or its replicas elsewhere); every modality
    looks the same here."""

    def __init__(self, name: str, endpoints: str | Endpoints, timeouts: Timeouts,
                 max_connections: int, health_interval_s: float = 2.0,
                 max_in_flight: int | None = None):
        if isinstance(endpoints, str):
            endpoints = Endpoints((endpoints,))
        self.name = name
        self.endpoints = endpoints
        # Requests admitted to this worker and not yet ended (their last byte sent): the cap
        # the router admits against, and what a reload waits for before stopping it.
        self.max_in_flight = max_in_flight
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        many = len(endpoints.replicas) > 1
        self.replicas = [
            Replica(f"{name}/{i}" if many else name, i if many else None, url, timeouts,
                    max_connections)
            for i, url in enumerate(endpoints.replicas)
        ]
        # A chat pool router answers /health with 503 while any replica is down; it serves
        # (on the others) as long as it answers /liveness.
        self.gateway = None if endpoints.gateway is None else Replica(
            f"{name}/router", None, endpoints.gateway, timeouts, max_connections,
            health_path="/liveness")
        self.gateway_metrics = endpoints.gateway_metrics
        # Where requests go: the pool router, or the replicas themselves.
        self.targets = [self.gateway] if self.gateway else self.replicas
        self.connect_timeout = timeouts.connect_s
        self.health_interval_s = health_interval_s
        self._turn = itertools.count()
        self._health: asyncio.Task | None = None

    @property
    def pooled(self) -> bool:
        return len(self.replicas) > 1

    def member(self, name: str) -> Replica:
        """The replica (or pool router) the launcher runs as process `name`."""
        return next(r for r in [*self.replicas, *self.targets] if r.name == name)

    def follow(self, endpoints: Endpoints) -> None:
        """Point each replica (and the pool router) at where `endpoints` says it is now: a
        router beside `serving up` follows its runtime file so."""
        pairs = list(zip(self.replicas, endpoints.replicas, strict=False))
        if self.gateway is not None and endpoints.gateway is not None:
            pairs.append((self.gateway, endpoints.gateway))
        for member, url in pairs:
            if member.base_url != url:
                log.info("%s moved to %s", member.name, url)
                member.move_to(url)

    def unavailable(self) -> OpenAIError:
        return unavailable(self.name)

    def try_acquire(self) -> bool:
        """Count a request in, unless the worker has its `max_in_flight`."""
        if self.max_in_flight is not None and self.active >= self.max_in_flight:
            return False
        self.active += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every request admitted here has ended (at most `timeout_s`)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def pick(self, tried: frozenset[Replica] = frozenset()) -> Replica | None:
        """The target with the fewest requests in flight among those up (all of them if none
        is: a health check may be stale), ties taken in turn; None once all were tried."""
        if len(self.targets) == 1:  # one process, or a chat pool's router: nothing to pick
            return None if tried else self.targets[0]
        targets = [t for t in self.targets if t not in tried]
        if len(targets) <= 1:
            return targets[0] if targets else None
        candidates = [t for t in targets if t.up] or targets
        start = next(self._turn) % len(candidates)
        turn = candidates[start:] + candidates[:start]
        return min(turn, key=lambda t: t.in_flight)

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
        limits = None if timeout is None else httpx.Timeout(timeout,
                                                            connect=self.connect_timeout)
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type

        def build(replica: Replica) -> httpx.Request:
            return httpx.Request("POST", replica.url(path), json=body, content=content,
                                 headers=headers, extensions={
                                     "timeout": (limits or replica.client.timeout).as_dict()})

        response, release = await self._send(build, stream)
        if stream and len(self.targets) > 1:  # counted until the body is closed
            response.stream = _Released(response.stream, release)
        else:  # one target: its count picks nothing, so streams are not wrapped (hot path)
            release()
        return response

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any
                     ) -> AsyncIterator[httpx.Response]:
        """Like `httpx.AsyncClient.stream`, on a replica `send` would pick: for a long call
        (a video render) that reads its answer as it comes. Transport errors are httpx's."""
        response, release = await self._send(
            lambda replica: replica.client.build_request(method, path, **kwargs), True,
            map_errors=False)
        try:
            yield response
        finally:
            try:
                await response.aclose()
            finally:
                release()

    async def _send(self, build: Callable[[Replica], httpx.Request], stream: bool,
                    map_errors: bool = True) -> tuple[httpx.Response, Callable[[], None]]:
        """Send to a replica; one that refuses the connection is marked down and the request
        goes to the next (nothing reached the first, so nothing is done twice). Returns the
        answer and the function that ends its count of requests in flight."""
        tried: frozenset[Replica] = frozenset()
        while True:
            replica = self.pick(tried)
            if replica is None:  # every replica refused the connection
                if not map_errors:
                    raise httpx.ConnectError(f"no replica of '{self.name}' accepts connections")
                raise self.unavailable()
            replica.in_flight += 1
            try:
                return await replica.send(build(replica), stream), _once(replica)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                replica.in_flight -= 1
                tried |= {replica}
                if self.pooled:
                    replica.up = False
                    log.warning("%s: %s; trying another replica", replica.name, e)
                    continue
                if not map_errors:
                    raise
                raise self.unavailable() from None
            except httpx.TimeoutException as e:
                replica.in_flight -= 1
                if not map_errors:
                    raise
                if isinstance(e, httpx.PoolTimeout):
                    raise self.unavailable() from None
                raise OpenAIError(504, f"The model worker '{self.name}' took too long to "
                                  "respond.", code="timeout") from None
            except httpx.TransportError:
                replica.in_flight -= 1
                if not map_errors:
                    raise
                raise self.unavailable() from None
            except BaseException:
                replica.in_flight -= 1
                raise

    def serves(self, states: dict[str, bool]) -> bool:
        """From `probe`'s answer: the pool router (if any) is up, and a replica is."""
        states = dict(states)
        router_up = self.gateway is None or states.pop(self.gateway.name)
        return router_up and any(states.values())

    async def probe(self) -> dict[str, bool]:
        """Each replica's (and the pool router's) health, by process name, checked now."""
        members = [*self.replicas, *([self.gateway] if self.gateway else [])]
        states = await asyncio.gather(*(m.healthy() for m in members))
        for member, up in zip(members, states, strict=True):
            member.up = up
        return {m.name: up for m, up in zip(members, states, strict=True)}

    def start(self) -> None:
        """Check a media pool's replicas in the background, so that one that fails its
        check gets no requests until it passes again. (A chat pool's router checks its own.)"""
        if self.pooled and self.gateway is None and self._health is None:
            self._health = asyncio.create_task(self._check_health())

    async def _check_health(self) -> None:
        while True:
            states = await asyncio.gather(*(r.healthy() for r in self.replicas))
            for replica, up in zip(self.replicas, states, strict=True):
                if replica.up != up:
                    log.warning("%s: %s", replica.name, "back up" if up else "down")
                replica.up = up
            await asyncio.sleep(self.health_interval_s)

    async def aclose(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for member in {*self.replicas, *self.targets}:
            await member.client.aclose()


def _once(replica: Replica) -> Callable[[], None]:
    """Ends one request's count on `replica`, however often it is called."""
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            replica.in_flight -= 1

    return release


class _Released(httpx.AsyncByteStream):
    """A streamed answer's body that ends its request's count when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream | Any, release: Callable[[], None]):
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()
