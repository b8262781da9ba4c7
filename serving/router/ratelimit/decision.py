"""What a rate-limit check answers, and the OpenAI headers that carry it to the client.

Kept apart from the stores so the response side (headers, Retry-After, the reset durations in
OpenAI's Go-duration style) is one small piece of pure code that every backend shares.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True)
class Quota:
    """One tracked bucket as the client sees it after this request."""

    limit: int
    remaining: int  # whole units left, never negative (a bucket in debt shows 0)
    reset_s: float  # seconds until the bucket is full again


@dataclass(frozen=True)
class Decision:
    """The answer to one `acquire`: admitted or not, and the state of each tracked bucket.

    `requests` / `tokens` are None for kinds without a limit. When denied, `exceeded` names the
    bucket that said no and `retry_after_s` is how long until it holds enough; a request that
    can never fit (`too_large`) has no retry time, as retrying it cannot help.
    """

    allowed: bool
    requests: Quota | None = None
    tokens: Quota | None = None
    exceeded: Kind | None = None
    retry_after_s: float | None = None
    too_large: bool = False

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the tracked kinds, plus `Retry-After` when a
        retry can succeed."""
        out: dict[str, str] = {}
        for kind, quota in (("requests", self.requests), ("tokens", self.tokens)):
            if quota is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
                out[f"x-ratelimit-reset-{kind}"] = format_duration(quota.reset_s)
        if not self.allowed and self.retry_after_s is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out

    def anthropic_headers(self, now: float | None = None) -> dict[str, str]:
        """The same buckets as Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,
        remaining,reset}` headers, which its clients read: the reset is the RFC 3339 time at
        which the bucket is full again, not a duration."""
        now = time.time() if now is None else now
        out: dict[str, str] = {}
        for kind, quota in (("requests", self.requests), ("tokens", self.tokens)):
            if quota is not None:
                reset = datetime.fromtimestamp(math.ceil(now + quota.reset_s), UTC)
                out[f"anthropic-ratelimit-{kind}-limit"] = str(quota.limit)
                out[f"anthropic-ratelimit-{kind}-remaining"] = str(quota.remaining)
                out[f"anthropic-ratelimit-{kind}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out


def format_duration(seconds: float) -> str:
    """A duration as Go's `time.Duration.String` writes it, which is what OpenAI sends in
    `x-ratelimit-reset-*`: "20ms", "1s", "8.64s", "6m0s", "1h2m3s".

    Under a second it counts milliseconds (to the microsecond); from a second up, seconds to
    the millisecond. Fractions keep at most 3 decimals with trailing zeros trimmed.
    """
    micros = round(max(0.0, seconds) * 1_000_000)
    if micros == 0:
        return "0s"
    if micros < 1_000_000:
        return f"{_decimals(micros, 1000)}ms"
    millis = round(micros / 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{_decimals(millis, 1000)}s"


def _decimals(count: int, per_unit: int) -> str:
    """`count / per_unit` (per_unit 1000) with at most 3 decimals, trailing zeros trimmed."""
    whole, frac = divmod(count, per_unit)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".")
