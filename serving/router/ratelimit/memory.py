"""Buckets in a dict, for a single router process (`rate_limit_store: memory`).

Atomic under asyncio because the critical sections contain no `await`: no other task can run
between reading a bucket and writing it back. Each process keeps its own buckets, so several
router processes or replicas need the Redis store to share a limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.router.ratelimit.bucket import Bucket, denying, refill
from serving.router.ratelimit.decision import Kind
from serving.router.ratelimit.store import RateLimitStore

# Every this many writes, drop buckets that have refilled completely (they are the same as
# absent ones), so keys that went idle do not pile up.
_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _State:
    level: float
    ts: float
    capacity: int


class MemoryStore(RateLimitStore):
    """`clock` returns seconds on a clock that never goes back; tests inject a fake one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, Kind], _State] = {}
        self._writes = 0

    async def _take(self, key: str, buckets: Sequence[Bucket]) -> tuple[list[float], int | None]:
        now = self._clock()
        levels = [self._level((key, b.kind), b.capacity, now) for b in buckets]
        denied_by = denying(buckets, levels)
        if denied_by is None:
            for bucket, level in zip(buckets, levels, strict=True):
                self._write((key, bucket.kind), level - bucket.cost, now, bucket.capacity)
        return levels, denied_by

    async def _adjust(self, key: str, capacity: int, delta: int) -> None:
        now = self._clock()
        level = self._level((key, "tokens"), capacity, now)
        self._write((key, "tokens"), min(float(capacity), level - delta), now, capacity)

    async def aclose(self) -> None:
        self._buckets.clear()

    def _level(self, name: tuple[str, Kind], capacity: int, now: float) -> float:
        state = self._buckets.get(name)
        if state is None:
            return float(capacity)
        return refill(state.level, now - state.ts, capacity)

    def _write(self, name: tuple[str, Kind], level: float, now: float, capacity: int) -> None:
        self._buckets[name] = _State(level, now, capacity)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._buckets = {
                n: s for n, s in self._buckets.items()
                if refill(s.level, now - s.ts, s.capacity) < s.capacity
            }
