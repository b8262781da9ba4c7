"""Request bodies as JSON that is also valid Unicode.

Python's json module accepts a lone UTF-16 surrogate (`"\\ud800"`, or the raw bytes of one),
which no UTF-8 encoder can write back: such a string would fail later, forwarding the request
to a worker or quoting it in an error. It is rejected here, as it arrives, with a 400 naming
the field. Routes with JSON bodies use `StrictJSONRoute`; others call `loads`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from serving.errors import invalid_request, param_path

# Where a lone surrogate can come from: an escape in the text, or its bytes (ED A0..BF ..).
_MAYBE_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]|\xed[\xa0-\xbf]")


def loads(body: bytes) -> Any:
    """json.loads, plus a 400 for any string (key or value) that is not valid Unicode."""
    data = json.loads(body)
    if _MAYBE_SURROGATE.search(body):
        _check(data, [])
    return data


def _check(node: Any, path: list[str | int]) -> None:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            param = param_path(path) or None
            raise invalid_request(
                f"Invalid value for '{param}': the string holds a lone UTF-16 surrogate, "
                "which is not valid Unicode." if param else "The request body holds a lone "
                "UTF-16 surrogate, which is not valid Unicode.",
                param=param, code="invalid_value") from None
    elif isinstance(node, dict):
        for key, value in node.items():
            _check(key, path)
            _check(value, [*path, key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check(value, [*path, i])


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """FastAPI parses the body through `loads`. FastAPI wraps what `json()` raises in a 400
    HTTPException; the error handlers unwrap the envelope from it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict
