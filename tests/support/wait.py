"""Waiting for a condition instead of sleeping: a test holds on a slow machine and does not
wait longer than it must on a fast one."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = 60,
               every_s: float = 0.1) -> T:
    """The first truthy value `condition()` returns, checked every `every_s`; after
    `timeout_s`, an AssertionError saying what was awaited and what was seen last."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} "
                                 f"(last seen: {value!r})")
        time.sleep(every_s)


async def await_until(condition: Callable[[], T | Awaitable[T]], what: str,
                      timeout_s: float = 60, every_s: float = 0.05) -> T:
    """`wait_until` inside an event loop; `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} "
                                 f"(last seen: {value!r})")
        await asyncio.sleep(every_s)
