"""Server-sent events as every streamed answer here writes them: one `data:` line per event;
and as the router reads them from a worker's stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


def sse_event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def read_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The complete events (without their closing blank line) in each read of a stream, as
    soon as they have arrived; an event split across reads waits for its end. JSON data never
    holds a raw newline, so the blank line only ever ends an event."""
    pending = b""
    async for data in chunks:
        pending = pending + data if pending else data
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        events, pending = pending[:end].split(b"\n\n"), pending[end + 2 :]
        yield events
