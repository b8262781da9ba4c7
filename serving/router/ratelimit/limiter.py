"""What the router holds: a store chosen by URL, and the limits of keys that set none.

Lets the request path say `limiter.acquire(key.name, key.limits, tokens)` without knowing
which backend is in use or where default limits come from.
"""

from __future__ import annotations

import os

from serving.config import Limits, RouterConfig
from serving.router.ratelimit.decision import Decision
from serving.router.ratelimit.memory import MemoryStore
from serving.router.ratelimit.redis_store import RedisStore
from serving.router.ratelimit.store import RateLimitStore

REDIS_PASSWORD_ENV = "REDIS_PASSWORD"


def make_store(url: str) -> RateLimitStore:
    """`memory` (one router process) or a redis:// / rediss:// URL (shared by replicas).

    Redis's password may come from the REDIS_PASSWORD environment variable rather than the URL,
    so that it stays out of config files (and a Kubernetes ConfigMap), as libpq's PGPASSWORD
    does for the database. A password in the URL still wins: redis-py's `from_url` lets the
    URL's options override its keyword arguments. Unset or empty: no password from here.
    """
    if url == "memory":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://")):
        return RedisStore.from_url(url, password=os.environ.get(REDIS_PASSWORD_ENV) or None)
    raise ValueError(f"rate-limit store must be `memory` or a redis:// URL, got {url!r}")


class RateLimiter:
    """A store plus default limits; `limits=None` means the key set none of its own."""

    def __init__(self, store: RateLimitStore, default_limits: Limits | None = None) -> None:
        self.store = store
        self.default_limits = default_limits or Limits()

    @classmethod
    def from_config(cls, router: RouterConfig) -> RateLimiter:
        return cls(make_store(router.rate_limit_store), router.default_limits)

    async def acquire(self, key: str, limits: Limits | None, tokens: int = 0) -> Decision:
        """See `RateLimitStore.acquire`."""
        return await self.store.acquire(key, limits or self.default_limits, tokens)

    async def settle(self, key: str, limits: Limits | None, delta_tokens: int) -> None:
        """See `RateLimitStore.settle`; `delta_tokens` is actual minus reserved tokens."""
        await self.store.settle(key, limits or self.default_limits, delta_tokens)

    async def aclose(self) -> None:
        await self.store.aclose()
