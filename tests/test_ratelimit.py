"""Per-key rate limits (serving.router.ratelimit), against both stores.

The Redis tests run a real `redis-server` (installed by `make install`); its refills follow the
server's clock, so they sleep for real and compare times approximately. Limits in exact
assertions are small so that the few milliseconds between calls refill far less than a unit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis

from serving.config import Limits, RouterConfig
from serving.router.ratelimit import (
    Decision,
    MemoryStore,
    RateLimiter,
    RateLimitStore,
    RedisStore,
    format_duration,
    make_store,
)
from tests.support import local_servers


@dataclass
class Backend:
    name: str
    make: Callable[[], RateLimitStore]  # call inside the event loop that uses the store
    advance: Callable[[float], Awaitable[None]]  # let this much time pass for the buckets
    exact: bool  # whether no time passes between calls (fake clock)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        return Backend("memory", lambda: MemoryStore(clock=clock), advance, exact=True)
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return Backend("redis", lambda: RedisStore.from_url(url), asyncio.sleep, exact=False)


def run(backend: Backend, body: Callable[[RateLimitStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = backend.make()
        try:
            await body(store)
        finally:
            await store.aclose()

    asyncio.run(main())


def key() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


# --- the duration formatter ------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (-3, "0s"),
    (0.02, "20ms"),
    (0.0205, "20.5ms"),
    (0.999, "999ms"),
    (0.9999999, "1s"),
    (1, "1s"),
    (8.64, "8.64s"),
    (8.6404, "8.64s"),
    (8.6449, "8.645s"),
    (59.9999, "1m0s"),
    (61.5, "1m1.5s"),
    (360, "6m0s"),
    (3600, "1h0m0s"),
    (3723, "1h2m3s"),
    (90061.25, "25h1m1.25s"),
])
def test_format_duration(seconds: float, text: str):
    assert format_duration(seconds) == text


# --- behaviour, on both stores ---------------------------------------------------------------

def test_allows_up_to_the_limit_then_denies(backend: Backend):
    limits = Limits(requests_per_minute=3)

    async def body(store: RateLimitStore) -> None:
        k = key()
        for remaining in (2, 1, 0):
            d = await store.acquire(k, limits, 10)
            assert d.allowed and d.exceeded is None and d.tokens is None
            assert d.requests is not None and d.requests.remaining == remaining
        d = await store.acquire(k, limits, 10)
        assert not d.allowed and d.exceeded == "requests" and not d.too_large
        assert d.retry_after_s == pytest.approx(20, abs=0.5)  # 1 request at 3/min
        assert d.requests is not None
        assert d.requests.reset_s == pytest.approx(60, abs=0.5)
        headers = d.headers()
        assert set(headers) == {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                                "x-ratelimit-reset-requests", "Retry-After"}
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["Retry-After"] == "20"
        if backend.exact:
            assert headers["x-ratelimit-reset-requests"] == "1m0s"

    run(backend, body)


def test_tokens_bucket_denies_with_its_headers(backend: Backend):
    limits = Limits(requests_per_minute=100, tokens_per_minute=120)

    async def body(store: RateLimitStore) -> None:
        k = key()
        d = await store.acquire(k, limits, 100)
        assert d.allowed
        assert d.headers() == {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-reset-requests": d.headers()["x-ratelimit-reset-requests"],
            "x-ratelimit-limit-tokens": "120",
            "x-ratelimit-remaining-tokens": "20",
            "x-ratelimit-reset-tokens": d.headers()["x-ratelimit-reset-tokens"],
        }
        assert d.tokens is not None and d.tokens.reset_s == pytest.approx(50, abs=0.5)
        if backend.exact:
            assert d.headers()["x-ratelimit-reset-requests"] == "600ms"
            assert d.headers()["x-ratelimit-reset-tokens"] == "50s"
        d = await store.acquire(k, limits, 30)
        assert not d.allowed and d.exceeded == "tokens"
        assert d.retry_after_s == pytest.approx(5, abs=0.5)  # 10 more tokens at 2/s
        assert d.tokens is not None and d.tokens.remaining == 0
        assert d.requests is not None and d.requests.remaining == 99
        assert d.headers()["Retry-After"] == "5"

    run(backend, body)


def test_refill_over_time(backend: Backend):
    """Redis keeps real time, which passes between calls (a lot of it on a loaded machine):
    the bounds there come from the time measured around the calls, not a fixed tolerance."""

    async def body(store: RateLimitStore) -> None:
        k = key()
        limits = Limits(requests_per_minute=60)  # one a second
        allowed = 0
        while (d := await store.acquire(k, limits, 0)).allowed:
            allowed += 1
        assert allowed == 60 if backend.exact else allowed >= 60
        assert d.retry_after_s is not None and 0 < d.retry_after_s <= 1
        await backend.advance(d.retry_after_s + 0.05)
        assert (await store.acquire(k, limits, 0)).allowed
        if backend.exact:  # with real time, another may have come back meanwhile
            assert not (await store.acquire(k, limits, 0)).allowed

        k = key()
        limits = Limits(tokens_per_minute=60)  # one a second
        started = time.monotonic()
        assert (await store.acquire(k, limits, 60)).allowed
        d = await store.acquire(k, limits, 3)
        elapsed = time.monotonic() - started
        assert not d.allowed and d.exceeded == "tokens"
        assert d.retry_after_s is not None
        assert 3 - elapsed - 0.01 <= d.retry_after_s <= 3 + 0.01
        await backend.advance(d.retry_after_s + 0.05)
        assert (await store.acquire(k, limits, 3)).allowed

    run(backend, body)


def test_a_denial_takes_nothing(backend: Backend):
    limits = Limits(requests_per_minute=2, tokens_per_minute=100)

    async def body(store: RateLimitStore) -> None:
        k = key()
        assert (await store.acquire(k, limits, 60)).allowed
        # Denied on tokens: its request is not counted.
        d = await store.acquire(k, limits, 50)
        assert not d.allowed and d.exceeded == "tokens"
        d = await store.acquire(k, limits, 40)
        assert d.allowed and d.requests is not None and d.requests.remaining == 0
        assert d.tokens is not None and d.tokens.remaining == 0
        # Denied on requests (checked first): its tokens are not taken either.
        await store.settle(k, limits, -100)
        d = await store.acquire(k, limits, 70)
        assert not d.allowed and d.exceeded == "requests"
        assert d.tokens is not None and d.tokens.remaining == 100

    run(backend, body)


def test_settle_refunds_and_charges_debt(backend: Backend):
    limits = Limits(tokens_per_minute=120)  # two a second

    async def body(store: RateLimitStore) -> None:
        k = key()
        d = await store.acquire(k, limits, 100)
        assert d.tokens is not None and d.tokens.remaining == 20
        await store.settle(k, limits, -50)  # used 50 of the 100 reserved
        d = await store.acquire(k, limits, 0)
        assert d.tokens is not None and d.tokens.remaining == 70
        await store.settle(k, limits, 100)  # used 100 more than reserved: 30 in debt
        d = await store.acquire(k, limits, 10)
        assert not d.allowed and d.exceeded == "tokens"
        assert d.retry_after_s == pytest.approx(20, abs=0.5)  # 40 tokens at 2/s
        assert d.tokens is not None and d.tokens.remaining == 0
        assert d.tokens.reset_s == pytest.approx(75, abs=0.5)  # 150 tokens to full
        # A refund never fills past capacity; zero and unlimited settles change nothing.
        await store.settle(k, limits, -1000)
        await store.settle(k, limits, 0)
        await store.settle(k, Limits(requests_per_minute=5), 500)
        d = await store.acquire(k, limits, 0)
        assert d.tokens is not None and d.tokens.remaining == 120

    run(backend, body)


def test_too_large_never_fits(backend: Backend):
    limits = Limits(requests_per_minute=1, tokens_per_minute=100)

    async def body(store: RateLimitStore) -> None:
        k = key()
        d = await store.acquire(k, limits, 101)
        assert not d.allowed and d.too_large and d.exceeded == "tokens"
        assert d.retry_after_s is None and "Retry-After" not in d.headers()
        assert d.requests is not None and d.requests.remaining == 1
        # It took nothing; and it is reported as too large even when requests ran out too.
        assert (await store.acquire(k, limits, 100)).allowed
        d = await store.acquire(k, limits, 101)
        assert d.too_large and d.exceeded == "tokens"

    run(backend, body)


def test_unlimited_kinds_are_not_tracked(backend: Backend):
    async def body(store: RateLimitStore) -> None:
        k = key()
        d = await store.acquire(k, Limits(), 10**9)
        assert d == Decision(allowed=True) and d.headers() == {}
        d = await store.acquire(k, Limits(requests_per_minute=5), 10**9)
        assert d.allowed and d.tokens is None
        assert {h.rsplit("-", 1)[1] for h in d.headers()} == {"requests"}
        d = await store.acquire(k, Limits(tokens_per_minute=5), 3)
        assert d.allowed and d.requests is None
        assert {h.rsplit("-", 1)[1] for h in d.headers()} == {"tokens"}

    run(backend, body)


def test_concurrent_acquires_never_over_admit(backend: Backend):
    limits = Limits(requests_per_minute=5, tokens_per_minute=1000)

    async def body(store: RateLimitStore) -> None:
        k = key()
        decisions = await asyncio.gather(*(store.acquire(k, limits, 100) for _ in range(20)))
        assert sum(d.allowed for d in decisions) == 5

    run(backend, body)


def test_bad_arguments(backend: Backend):
    async def body(store: RateLimitStore) -> None:
        with pytest.raises(ValueError):
            await store.acquire(key(), Limits(tokens_per_minute=5), -1)
        with pytest.raises(ValueError):
            await store.acquire("", Limits(requests_per_minute=5), 0)

    run(backend, body)


# --- Redis specifics -------------------------------------------------------------------------

def test_two_replicas_share_one_limit(redis_url: str):
    limits = Limits(requests_per_minute=4, tokens_per_minute=100)

    async def main() -> None:
        a, b = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
        try:
            k = key()
            assert (await a.acquire(k, limits, 30)).allowed
            d = await b.acquire(k, limits, 30)
            assert d.allowed and d.requests is not None and d.requests.remaining == 2
            assert d.tokens is not None and d.tokens.remaining == 40
            await a.settle(k, limits, -30)  # a refund on one replica is seen by the other
            d = await b.acquire(k, limits, 0)
            assert d.tokens is not None and d.tokens.remaining == 70
            racers = [s.acquire(k, limits, 1) for s in (a, b) * 5]
            assert sum(d.allowed for d in await asyncio.gather(*racers)) == 1
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def test_redis_keys_are_prefixed_and_expire(redis_url: str):
    limits = Limits(requests_per_minute=60, tokens_per_minute=600)

    async def main() -> None:
        store = RedisStore.from_url(redis_url)
        try:
            k = key()
            await store.acquire(k, limits, 10)
        finally:
            await store.aclose()
        client = redis.Redis.from_url(redis_url)
        names = sorted(n.decode() for n in client.keys(f"serving:rl:*{k}*"))
        assert names == [f"serving:rl:{{{k}}}:requests", f"serving:rl:{{{k}}}:tokens"]
        # Each lives a little past the time it takes to refill: 1 s for both here.
        for name in names:
            assert 1000 < client.pttl(name) <= 2000
        assert set(client.hgetall(names[0])) == {b"level", b"ts"}
        client.close()

    asyncio.run(main())


# --- construction ----------------------------------------------------------------------------

def test_make_store(redis_url: str):
    assert isinstance(make_store("memory"), MemoryStore)
    store = make_store(redis_url)
    assert isinstance(store, RedisStore)
    asyncio.run(store.aclose())
    assert isinstance(make_store("rediss://example.invalid:6380/0"), RedisStore)
    with pytest.raises(ValueError):
        make_store("memcached://localhost")


def test_limiter_falls_back_to_default_limits():
    clock = FakeClock()

    async def main() -> None:
        limiter = RateLimiter(MemoryStore(clock=clock), Limits(requests_per_minute=1))
        assert (await limiter.acquire("a", None, 5)).allowed
        assert not (await limiter.acquire("a", None, 5)).allowed
        for _ in range(2):
            assert (await limiter.acquire("b", Limits(requests_per_minute=2), 5)).allowed
        await limiter.settle("a", None, 5)  # no tokens limit: nothing to settle
        await limiter.aclose()

    asyncio.run(main())
    config = RouterConfig(default_limits=Limits(tokens_per_minute=7))
    limiter = RateLimiter.from_config(config)
    assert isinstance(limiter.store, MemoryStore)
    assert limiter.default_limits.tokens_per_minute == 7


def test_redis_password_from_the_environment(redis_with_password: local_servers.Redis,
                                             monkeypatch: pytest.MonkeyPatch):
    """REDIS_PASSWORD gives the password that the URL (and so the config) leaves out."""
    server = redis_with_password
    assert server.password and server.password not in server.url
    config = RouterConfig(rate_limit_store=server.url,
                          default_limits=Limits(requests_per_minute=1))

    def acquire_twice(config: RouterConfig) -> list[bool]:
        async def main() -> list[bool]:
            limiter = RateLimiter.from_config(config)
            try:
                k = key()
                return [(await limiter.acquire(k, None)).allowed for _ in range(2)]
            finally:
                await limiter.aclose()

        return asyncio.run(main())

    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    with pytest.raises(redis.AuthenticationError):
        acquire_twice(config)
    monkeypatch.setenv("REDIS_PASSWORD", "")  # empty counts as unset
    with pytest.raises(redis.AuthenticationError):
        acquire_twice(config)
    monkeypatch.setenv("REDIS_PASSWORD", server.password)
    assert acquire_twice(config) == [True, False]  # the server's bucket: the second is denied
    # A password in the URL wins over the environment's, right or wrong.
    with_password = server.url.replace("redis://", f"redis://:{server.password}@")
    monkeypatch.setenv("REDIS_PASSWORD", "not-" + server.password)
    assert acquire_twice(config.model_copy(update={"rate_limit_store": with_password})) == [
        True, False]
    monkeypatch.setenv("REDIS_PASSWORD", server.password)
    wrong = server.url.replace("redis://", f"redis://:not-{server.password}@")
    with pytest.raises(redis.AuthenticationError):
        acquire_twice(config.model_copy(update={"rate_limit_store": wrong}))


def test_anthropic_headers_carry_the_same_buckets_with_a_reset_time():
    from serving.router.ratelimit.decision import Decision, Quota

    d = Decision(allowed=False, requests=Quota(3, 0, 60.0), tokens=Quota(120, 20, 0.4),
                 exceeded="requests", retry_after_s=20)
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert d.anthropic_headers(now) == {
        "anthropic-ratelimit-requests-limit": "3",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:01:00Z",
        "anthropic-ratelimit-tokens-limit": "120",
        "anthropic-ratelimit-tokens-remaining": "20",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:01Z",
    }
