"""Server-sent events as every streamed answer here writes them: one `data:` line per event."""

from __future__ import annotations

import json
from typing import Any


def sse_event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
