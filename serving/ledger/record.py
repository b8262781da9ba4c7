"""One row of the usage ledger: what a single API request cost."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """A finished request (successful or not), as the router saw it."""

    ts: float  # unix seconds, when the request finished
    request_id: str
    key_name: str
    model: str
    endpoint: str  # e.g. "/v1/chat/completions"
    status: int  # HTTP status sent; 499: the client went away first
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    characters: int = 0
    video_seconds: float = 0.0
    latency_ms: float = 0.0


# Column order of the table, which is also the field order of the dataclass.
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))

# The quantities `totals` sums (latency is per request, so it is not summed).
SUMMED: tuple[str, ...] = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "images",
    "audio_seconds",
    "characters",
    "video_seconds",
)
FLOAT_SUMS = frozenset({"audio_seconds", "video_seconds"})
