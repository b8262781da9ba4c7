"""Waiting for a worker to finish what it holds before it stops.

One reading of "busy" for the launcher (a reload stops a retired vLLM once it holds no
request) and for a Kubernetes pod's preStop hook (`serving drain`: a deleted chat pod has
already left its pool router, whose service discovery drops a pod as soon as it is marked for
deletion; the hook keeps the container alive until the requests it was sent have finished).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

_BUSY = re.compile(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)$", re.MULTILINE)


def requests_held(metrics_text: str) -> float | None:
    """Requests a vLLM server is running or queueing, from its /metrics text; None when the
    text has no such counters (a media worker, which does not report what it holds)."""
    values = _BUSY.findall(metrics_text)
    return sum(float(v) for v in values) if values else None


def held_at(url: str, timeout_s: float = 5.0) -> float | None:
    """`requests_held` of the worker at `url`; 0 when it does not answer (nothing to wait
    for), None when it answers without vLLM's counters."""
    try:
        text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return 0.0
    return requests_held(text)


def drain(url: str, timeout_s: float, settle_s: float = 5.0, poll_s: float = 1.0,
          held: Callable[[str], float | None] = held_at,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """Block until the worker at `url` holds no request, for at least `settle_s` (time for
    a pool router to see the pod leave and for requests already on the wire to arrive) and at
    most `timeout_s`. A worker that does not report what it holds is given all of
    `timeout_s`. Returns why it stopped waiting: "idle", "timeout" or "unreported"."""
    start = clock()
    deadline = start + timeout_s
    idle_since: float | None = None
    while True:
        now = clock()
        if now >= deadline:
            return "timeout"
        count = held(url)
        if count is None:
            sleep(max(0.0, deadline - now))
            return "unreported"
        if count > 0:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - start >= settle_s and now - idle_since >= poll_s:
            return "idle"
        sleep(min(poll_s, max(0.0, deadline - now)))
