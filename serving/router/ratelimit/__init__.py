"""Per-key rate limits as OpenAI applies them: a requests and a tokens bucket per API key.

`acquire` admits a request (reserving its tokens) or denies it with the bucket that said no
and when to retry; `settle` corrects the reservation against actual usage; `Decision.headers`
gives the `x-ratelimit-*` and `Retry-After` headers. Stores: in memory, or Redis for replicas.
"""

from serving.router.ratelimit.decision import Decision, Kind, Quota, format_duration
from serving.router.ratelimit.limiter import RateLimiter, make_store
from serving.router.ratelimit.memory import MemoryStore
from serving.router.ratelimit.redis_store import RedisStore
from serving.router.ratelimit.store import RateLimitStore

__all__ = [
    "Decision",
    "Kind",
    "MemoryStore",
    "Quota",
    "RateLimitStore",
    "RateLimiter",
    "RedisStore",
    "format_duration",
    "make_store",
]
