"""One row of the usage ledger: what a single API request cost."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields


def new_event_id() -> str:
    """A random id for one record. The request id cannot be the key: clients may choose their
    own X-Request-Id, and may send the same one twice."""
    return secrets.token_hex(16)


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
    # Unique in the table: a batch written again (its commit acknowledgement was lost, or two
    # replicas bill one render) is inserted once. Fixed at creation, so every retry carries it.
    event_id: str = field(default_factory=new_event_id)


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
