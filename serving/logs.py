"""Logging for every `serving` command: one format, the request id on every line, and the
writes off the event loop.

The router logs a line per request, and the write (a system call, on a pipe that may be slow
to drain) would otherwise stall its event loop, ~12% of a router's time under a stream load
(scripts/bench_router.py): lines go to stdout from a thread of their own. The request id lives
in a context variable that the router's outermost middleware sets for each request, and is
read where a record is made.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.handlers
import queue
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_writer: logging.handlers.QueueListener | None = None


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str = "info") -> None:
    """Route every logger through the queue to stdout at `level`; safe to call again (a
    reload changes the level so)."""
    global _writer
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "serving | %(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
    ))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = logging.handlers.QueueHandler(records)
    front.addFilter(RequestIdFilter())
    if _writer is not None:
        atexit.unregister(_writer.stop)
        _writer.stop()
    _writer = logging.handlers.QueueListener(records, handler)
    _writer.start()
    atexit.register(_writer.stop)  # what is queued is written before the process ends
    root = logging.getLogger()
    root.handlers[:] = [front]
    root.setLevel(level.upper())
    # httpx logs every request to a worker at INFO: noise on the hot path.
    logging.getLogger("httpx").setLevel(logging.WARNING)
