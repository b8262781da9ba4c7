"""Buckets in Redis, shared by every router replica (`rate_limit_store: redis://...`).

Each operation is one Lua script, so check-and-take is atomic across replicas, and the scripts
read the clock with `TIME` so replicas whose clocks disagree still agree on refills. Each
bucket is a hash {level, ts (microseconds)} that expires a little after it would be full again,
so the keys of idle API keys vanish on their own. The rules are those of bucket.py.

Key names are `serving:rl:{<key>}:requests` and `serving:rl:{<key>}:tokens`: the braces are a
Redis Cluster hash tag, which puts both buckets of a key in one slot (a script may only touch
keys of one slot), and since neither kind suffix is a suffix of the other, no key name can make
one kind's bucket collide with another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from serving.router.ratelimit.bucket import EPSILON, Bucket
from serving.router.ratelimit.decision import Kind
from serving.router.ratelimit.store import RateLimitStore

# Shared by both scripts: the server's clock, a bucket's refilled level, and writing it back.
# Numbers cross to the client as strings ('%.17g' round-trips a double; a Lua number in a reply
# would be truncated to an integer).
_COMMON = f"""
local EPSILON = {EPSILON!r}
local SLACK_MS = 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function level_of(key, cap)
  local state = redis.call('HMGET', key, 'level', 'ts')
  if not state[1] then return cap end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(cap, tonumber(state[1]) + elapsed * cap / 60000000)
end

local function write(key, cap, level)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((cap - level) * 60000 / cap) + SLACK_MS)
end
"""

# KEYS: the buckets, requests first. ARGV: capacity and cost of each, in order.
# Returns {verdict, level, ...}: verdict 0 when every cost was taken, else the 1-based index of
# the bucket that denied (and nothing was taken); levels are those before this call.
_ACQUIRE = _COMMON + """
local levels, verdict = {}, 0
for i, key in ipairs(KEYS) do
  levels[i] = level_of(key, tonumber(ARGV[2 * i - 1]))
end
for i = 1, #KEYS do
  if tonumber(ARGV[2 * i]) > tonumber(ARGV[2 * i - 1]) then verdict = i break end
end
if verdict == 0 then
  for i = 1, #KEYS do
    if levels[i] + EPSILON < tonumber(ARGV[2 * i]) then verdict = i break end
  end
end
if verdict == 0 then
  for i, key in ipairs(KEYS) do
    write(key, tonumber(ARGV[2 * i - 1]), levels[i] - tonumber(ARGV[2 * i]))
  end
end
local reply = {verdict}
for i = 1, #levels do reply[i + 1] = string.format('%.17g', levels[i]) end
return reply
"""

# KEYS[1]: a tokens bucket. ARGV: its capacity, and the tokens to take (negative: refund).
_SETTLE = _COMMON + """
local cap = tonumber(ARGV[1])
write(KEYS[1], cap, math.min(cap, level_of(KEYS[1], cap) - tonumber(ARGV[2])))
return 0
"""


class RedisStore(RateLimitStore):
    """Owns `client`: `aclose` closes it."""

    def __init__(self, client: Redis, prefix: str = "serving:rl") -> None:
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStore:
        """A store on a redis:// or rediss:// URL (redis-py's `from_url` options apply)."""
        return cls(Redis.from_url(url, **kwargs))

    def bucket_key(self, key: str, kind: Kind) -> str:
        return f"{self._prefix}:{{{key}}}:{kind}"

    async def _take(self, key: str, buckets: Sequence[Bucket]) -> tuple[list[float], int | None]:
        reply = await self._acquire(
            keys=[self.bucket_key(key, b.kind) for b in buckets],
            args=[n for b in buckets for n in (b.capacity, b.cost)],
        )
        verdict = int(reply[0])
        return [float(x) for x in reply[1:]], (verdict - 1 if verdict else None)

    async def _adjust(self, key: str, capacity: int, delta: int) -> None:
        await self._settle(keys=[self.bucket_key(key, "tokens")], args=[capacity, delta])

    async def aclose(self) -> None:
        await self._client.aclose()
