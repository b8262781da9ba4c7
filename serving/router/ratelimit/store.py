"""The one interface every rate-limit backend implements.

`acquire` and `settle` hold the rules that do not depend on where buckets live (which kinds are
tracked, argument checks, building the `Decision`), so a backend only supplies two atomic
primitives: take a request's costs all-or-nothing, and adjust a tokens bucket afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from serving.config import Limits
from serving.router.ratelimit.bucket import Bucket, buckets_for, decide
from serving.router.ratelimit.decision import Decision


class RateLimitStore(ABC):
    """Token buckets per (key name, kind); see bucket.py for the rules."""

    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        """Admit a request that reserves `tokens`, taking 1 request and `tokens` tokens, or
        deny it and take nothing."""
        _check(key)
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        buckets = buckets_for(limits, tokens)
        if not buckets:
            return Decision(allowed=True)
        levels, denied_by = await self._take(key, buckets)
        return decide(buckets, levels, denied_by)

    async def settle(self, key: str, limits: Limits, delta_tokens: int) -> None:
        """Correct the reservation once usage is known: `delta_tokens` is actual minus
        reserved. Positive takes more (the bucket may go into debt), negative refunds (never
        past a full bucket)."""
        _check(key)
        if limits.tokens_per_minute is None or delta_tokens == 0:
            return
        await self._adjust(key, limits.tokens_per_minute, delta_tokens)

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections; the store is unusable afterwards."""

    @abstractmethod
    async def _take(self, key: str, buckets: Sequence[Bucket]) -> tuple[list[float], int | None]:
        """Atomically: refill `buckets`, find `bucket.denying(...)`, and if nothing denies take
        every cost. Returns the levels before taking, and the index of the denying bucket."""

    @abstractmethod
    async def _adjust(self, key: str, capacity: int, delta: int) -> None:
        """Atomically: refill the key's tokens bucket, subtract `delta`, cap at `capacity`."""


def _check(key: str) -> None:
    if not key:
        raise ValueError("a rate-limit key needs a non-empty name")
