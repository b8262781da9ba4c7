"""A worker's failures as the OpenAI errors a client gets."""

from __future__ import annotations

import httpx

from serving.errors import OpenAIError

RETRY_AFTER_S = "5"


def unavailable(name: str) -> OpenAIError:
    """The worker (every replica of it) cannot be reached: a 503 to retry."""
    return OpenAIError(
        503, f"The model worker '{name}' is not available right now; retry shortly.",
        code="worker_unavailable", headers={"Retry-After": RETRY_AFTER_S})


def upstream_error(response: httpx.Response) -> OpenAIError:
    """A worker's own error reply, re-worded into the envelope with a string-or-null `code`."""
    status = response.status_code
    message, param = f"The model worker answered HTTP {status}.", None
    try:
        err = response.json().get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            message = err
    except (ValueError, AttributeError):
        pass
    if status >= 500:
        # The worker failed, not the request; 503 stays 503 so clients retry it.
        return OpenAIError(503 if status == 503 else 502, f"The model worker failed: {message}",
                           headers={"Retry-After": RETRY_AFTER_S} if status == 503 else None)
    return OpenAIError(status, message, param=param)
