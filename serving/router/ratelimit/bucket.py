"""Token-bucket arithmetic shared by every store, so they cannot disagree on the rules.

A bucket holds up to `capacity` (the per-minute limit), refills continuously at capacity/60
per second and starts full. A request costs 1 from its key's requests bucket and its reserved
tokens from the tokens bucket; it is admitted only if every tracked bucket holds enough, and
then it takes from all of them at once. `settle` may push the tokens bucket below zero (debt),
which later requests wait out. The Redis store runs the same rules in Lua (see redis_store.py);
these functions are the reference that the memory store runs and that both stores use to turn
levels into a `Decision`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from serving.config import Limits
from serving.router.ratelimit.decision import Decision, Kind, Quota

# Slack on comparisons and floors, so float noise in refills (4.9999999999 for 5) never turns
# a full bucket into a denial. The Lua scripts use the same value.
EPSILON = 1e-9


@dataclass(frozen=True)
class Bucket:
    """One tracked bucket for one call: its kind, its size, and what the call asks of it."""

    kind: Kind
    capacity: int
    cost: int

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.capacity / 60


def buckets_for(limits: Limits, tokens: int) -> tuple[Bucket, ...]:
    """The tracked buckets of a request, requests first (the order denials are checked in)."""
    out = []
    if limits.requests_per_minute is not None:
        out.append(Bucket("requests", limits.requests_per_minute, 1))
    if limits.tokens_per_minute is not None:
        out.append(Bucket("tokens", limits.tokens_per_minute, tokens))
    return tuple(out)


def refill(level: float, elapsed_s: float, capacity: int) -> float:
    """The level `elapsed_s` later: up at capacity/60 per second, never past capacity."""
    return min(float(capacity), level + max(0.0, elapsed_s) * capacity / 60)


def denying(buckets: Sequence[Bucket], levels: Sequence[float]) -> int | None:
    """Index of the bucket that denies the call, or None to admit it. A cost that can never
    fit wins over a bucket that is merely short now, since waiting cannot help it."""
    for i, bucket in enumerate(buckets):
        if bucket.cost > bucket.capacity:
            return i
    for i, (bucket, level) in enumerate(zip(buckets, levels, strict=True)):
        if level + EPSILON < bucket.cost:
            return i
    return None


def decide(buckets: Sequence[Bucket], levels: Sequence[float], denied_by: int | None) -> Decision:
    """The `Decision` for a call, from each bucket's level before it and the verdict of
    `denying` (computed by the store, inside its atomic section)."""
    quotas: dict[str, Quota] = {}
    for i, (bucket, level) in enumerate(zip(buckets, levels, strict=True)):
        after = level - bucket.cost if denied_by is None else level
        remaining = 0 if i == denied_by else max(0, math.floor(after + EPSILON))
        reset = max(0.0, (bucket.capacity - after) / bucket.rate)
        quotas[bucket.kind] = Quota(bucket.capacity, remaining, reset)
    if denied_by is None:
        return Decision(True, quotas.get("requests"), quotas.get("tokens"))
    bucket = buckets[denied_by]
    too_large = bucket.cost > bucket.capacity
    retry = None if too_large else max(0.0, (bucket.cost - levels[denied_by]) / bucket.rate)
    return Decision(False, quotas.get("requests"), quotas.get("tokens"), exceeded=bucket.kind,
                    retry_after_s=retry, too_large=too_large)
