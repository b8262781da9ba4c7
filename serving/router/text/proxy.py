"""Forward a validated chat/completions request to vLLM and relay its answer.

The router's hot path. Non-streamed answers are parsed once to clean them up (usage, fields the
spec does not allow as null, vLLM-only fields). Streamed answers are relayed event by event as
they arrive and are not parsed: the router asks vLLM for usage on every chunk (so a stream the
client drops is metered to the token), cuts it out of each chunk by its bytes, and parses only
the closing usage event, which it passes on when the client asked for
`stream_options.include_usage`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.router.call_worker import WorkerCall
from serving.router.context import Meter
from serving.router.registry import Served
from serving.router.usage import normalize_usage
from serving.sse import read_events

log = logging.getLogger("serving.router")

# vLLM serialises compactly, and inside a JSON string a quote is always escaped, so these
# byte strings appear in a chunk only as its own fields: a usage object, and the empty choices
# of the closing usage-only event.
_USAGE_MARK = b',"usage":{'
_FINAL = b'"choices":[]'
_NO_TOKENS = re.compile(rb'"completion_tokens":0[,}]')
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


async def forward(call: WorkerCall, m: Meter, served: Served, path: str,
                  body: dict[str, Any], *, tokens: int) -> Response:
    """Call the vLLM worker with `body` (holding `tokens` of the key's budget) and answer."""
    caching = "prefix_caching" in served.entry.capabilities
    if not body.get("stream"):
        # A client that leaves aborts the generation: closing the upstream connection makes
        # vLLM abort the request. (A stream is cancelled the same way, by Starlette.)
        response = await call(served, path, body, tokens=tokens)
        data = clean(response.json())
        data["usage"] = m.usage = normalize_usage(data.get("usage"), caching=caching)
        return JSONResponse(data)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    # Usage on every chunk, so a stream the client drops is still metered to the token; the
    # relay takes it out of each chunk again.
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    response = await call(served, path, body, tokens=tokens, stream=True)
    return StreamingResponse(
        _relay(response, include_usage, caching, m),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage_span(event: bytes) -> tuple[int, int] | None:
    """Where `,"usage":{...}` sits in a compact chunk: found by bytes, never parsed."""
    start = event.find(_USAGE_MARK)
    if start < 0:
        return None
    # The usage object holds numbers, nulls and flat objects, no strings: its end is the first
    # `}` after which every `{` opened inside it has closed (one find, as a rule).
    depth, i = 1, start + len(_USAGE_MARK)
    while depth:
        end = event.find(b"}", i)
        if end < 0:
            return None
        depth += event.count(b"{", i, end) - 1
        i = end + 1
    return start, i


def _final_usage(event: bytes, include_usage: bool, caching: bool, m: Meter) -> bytes:
    """The closing usage-only event: meter it; rewrite it for the client, or drop it."""
    chunk = json.loads(event.removeprefix(b"data: "))
    chunk["usage"] = m.usage = normalize_usage(chunk.get("usage"), caching=caching)
    if not include_usage:
        return b""
    chunk.pop("system_fingerprint", None)
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode()


async def _relay(
    response: httpx.Response, include_usage: bool, caching: bool, m: Meter
) -> AsyncIterator[bytes]:
    last_usage = b""  # the latest running usage, kept as bytes, parsed only if the client leaves
    finished = False
    try:
        async for events in read_events(response.aiter_raw()):
            out = []
            for event in events:
                span = _usage_span(event)
                if span is None:
                    out.append(event)
                elif _FINAL in event:
                    finished = True
                    if final := _final_usage(event, include_usage, caching, m):
                        out.append(final)
                else:
                    last_usage = event[span[0] + len(_USAGE_MARK) - 1 : span[1]]
                    if m.first_token_at is None and not _NO_TOKENS.search(last_usage):
                        m.first_token()
                    out.append(event[: span[0]] + event[span[1] :])
            if out:
                yield b"\n\n".join(out) + b"\n\n"
    except httpx.TransportError as e:
        # Headers are sent; the best left is to end the stream with an error event.
        log.warning("worker stream broke: %s", e)
        m.status_override = 502
        err = {"error": {"message": "The model worker stopped mid-stream.",
                         "type": "server_error", "param": None, "code": "worker_unavailable"}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
    finally:
        if not finished:
            m.incomplete = True
            if last_usage:
                m.usage = normalize_usage(json.loads(last_usage), caching=caching)
        await response.aclose()
