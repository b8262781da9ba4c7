"""Forward a validated chat/completions request to vLLM and relay its answer.

The router's hot path. Non-streamed answers are parsed once to clean them up (usage, fields the
spec does not allow as null, vLLM-only fields). Streamed answers are relayed event by event as
they arrive and are not parsed, except for the single usage event at the end: the router
always asks vLLM for it (so every request can be metered) and only passes it on when the
client asked for `stream_options.include_usage`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.cancel import ClientDisconnected, unless_disconnected
from serving.router.usage import normalize_usage
from serving.router.workers import Worker, upstream_error

log = logging.getLogger("serving.router")

UsageSink = Callable[[dict[str, Any]], None]

# vLLM serialises compactly, and inside a JSON string a quote is always escaped, so this
# byte string appears in a chunk only where the chunk carries a usage object.
_USAGE_MARK = b'"usage":{'
# vLLM-only fields that are not part of OpenAI's response shapes.
_VLLM_ONLY = frozenset({
    "system_fingerprint", "stop_reason", "token_ids", "prompt_token_ids", "prompt_text",
    "prompt_logprobs", "kv_transfer_params", "ec_transfer_params", "metrics", "routed_experts",
    "reasoning", "reasoning_content",
})
# Fields OpenAI's schemas require but allow to be null; every other null is dropped, since the
# spec wants an object or array there, or nothing.
_NULLABLE = frozenset({"content", "refusal", "logprobs", "finish_reason"})


def clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: clean(v) for k, v in obj.items()
            if k not in _VLLM_ONLY and (v is not None or k in _NULLABLE)
        }
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


async def forward(
    request: Request,
    worker: Worker,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    caching: bool,
    on_usage: UsageSink,
) -> Response:
    if not body.get("stream"):
        try:
            # A client that leaves aborts the generation: closing the upstream connection
            # makes vLLM abort the request. (A stream is cancelled the same way, by Starlette.)
            response = await unless_disconnected(request, worker.send(path, body, headers))
        except ClientDisconnected:
            return Response(status_code=499)
        if response.status_code != 200:
            raise upstream_error(response)
        data = clean(response.json())
        data["usage"] = normalize_usage(data.get("usage"), caching=caching)
        on_usage(data["usage"])
        return JSONResponse(data)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    body["stream_options"] = {"include_usage": True}
    response = await worker.send(path, body, headers, stream=True)
    if response.status_code != 200:
        await response.aread()
        await response.aclose()
        raise upstream_error(response)
    return StreamingResponse(
        _relay(response, include_usage, caching, on_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage_event(event: bytes, include_usage: bool, caching: bool, on_usage: UsageSink) -> bytes:
    """Meter the usage event; rewrite it for the client, or drop it if they did not ask."""
    try:
        chunk = json.loads(event.removeprefix(b"data: "))
    except ValueError:
        return event  # not the usage event after all; pass it on untouched
    chunk["usage"] = normalize_usage(chunk.get("usage"), caching=caching)
    on_usage(chunk["usage"])
    if not include_usage:
        return b""
    chunk.pop("system_fingerprint", None)
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


async def _relay(
    response: httpx.Response, include_usage: bool, caching: bool, on_usage: UsageSink
) -> AsyncIterator[bytes]:
    pending = b""
    try:
        async for data in response.aiter_raw():
            pending = pending + data if pending else data
            end = pending.rfind(b"\n\n")
            if end < 0:
                continue  # an event split across reads; wait for its end
            out, pending = pending[: end + 2], pending[end + 2 :]
            if _USAGE_MARK in out:
                out = b"".join(
                    _usage_event(e + b"\n\n", include_usage, caching, on_usage)
                    if _USAGE_MARK in e else e + b"\n\n"
                    for e in out[:-2].split(b"\n\n")
                )
            if out:
                yield out
    except httpx.TransportError as e:
        # Headers are sent; the best left is to end the stream with an error event.
        log.warning("worker stream broke: %s", e)
        err = {"error": {"message": "The model worker stopped mid-stream.",
                         "type": "server_error", "param": None, "code": "worker_unavailable"}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        await response.aclose()
