"""Reading times off the command line, and the usage totals as a text table."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from serving.ledger.record import FLOAT_SUMS, SUMMED

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_since(text: str, now: float | None = None) -> float:
    """A point in time as unix seconds, from one of:

    - a duration back from `now`: "90s", "30m", "24h", "7d" (also "2w");
    - an ISO date or date-time: "2026-11-25", "2026-11-25T10:00:00", "...Z", "...+02:00"
      (no offset means UTC);
    - unix seconds: "1764064800".
    """
    s = text.strip()
    if m := _AGO.fullmatch(s.lower()):
        return (time.time() if now is None else now) - float(m[1]) * UNITS[m[2]]
    if _NUMBER.fullmatch(s):
        return float(s)
    try:
        when = datetime.fromisoformat(s) if s else None
    except ValueError:
        when = None
    if when is None:
        raise ValueError(
            f"cannot read {text!r} as a time: use a duration back from now (90s, 30m, 24h, "
            "7d), an ISO date or date-time (2026-11-25, 2026-11-25T10:00:00Z; UTC unless an "
            "offset is given) or unix seconds")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_time(ts: float) -> str:
    """`ts` as an ISO date-time in UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# (heading, totals field) of the number columns, in order.
NUMBER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("errors", "errors"),
    ("prompt", "prompt_tokens"),
    ("completion", "completion_tokens"),
    ("cached(read)", "cache_read_tokens"),
    ("cache-write", "cache_creation_tokens"),
    ("images", "images"),
    ("audio s", "audio_seconds"),
    ("chars", "characters"),
    ("video s", "video_seconds"),
)
_FLOATS = {field for _, field in NUMBER_COLUMNS if field in FLOAT_SUMS}
_SUMMED = ("requests", "errors", *SUMMED)


def _number(field: str, value: Any) -> str:
    if field in _FLOATS:
        return f"{float(value or 0):,.1f}"
    return f"{int(value or 0):,}"


def format_table(rows: Sequence[Mapping[str, Any]], by: Sequence[str]) -> str:
    """`rows` from `Ledger.totals(by=by)` as a fixed-width table: the group fields
    left-aligned, the numbers right-aligned, and a total line when there are several groups.
    """
    by = list(by)
    header = [*by, *(heading for heading, _ in NUMBER_COLUMNS)]
    body: list[list[str]] = []
    for row in rows:
        body.append([*("-" if row.get(g) is None else str(row[g]) for g in by),
                     *(_number(field, row.get(field)) for _, field in NUMBER_COLUMNS)])
    footer: list[list[str]] = []
    if by and len(rows) > 1:
        sums = {f: sum(r.get(f) or 0 for r in rows) for f in _SUMMED}
        footer.append(["total", *("" for _ in by[1:]),
                       *(_number(field, sums[field]) for _, field in NUMBER_COLUMNS)])
    widths = [max(len(line[i]) for line in [header, *body, *footer]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i < len(by) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in body)]
    if not rows:
        out.append("(no requests)")
    if footer:
        out += [rule, *(line(r) for r in footer)]
    return "\n".join(out)
