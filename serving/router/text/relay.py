"""Send a chat or legacy completions request to vLLM and relay its answer.

The router's hot path. Non-streamed answers are parsed once to clean them up (usage, fields the
spec does not allow as null, vLLM-only fields). Streamed answers are relayed event by event as
they arrive and are not parsed: the router asks vLLM for usage on every chunk (so a stream the
client drops is metered to the token), cuts it out of each chunk by its bytes, and parses only
the closing usage event, which it passes on when the client asked for
`stream_options.include_usage`. What this relies on in vLLM is in `vllm_contract`; an event the
bytes do not explain is parsed the slow way, and the stream logged as a contract break.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.errors import OpenAIError
from serving.router.call_worker import WorkerCall
from serving.router.context import Meter
from serving.router.usage import normalize_usage
from serving.sse import read_events, sse_event
from serving.upstream import vllm_contract as contract
from serving.upstream.served import Served

log = logging.getLogger("serving.router")

# Fields OpenAI's schemas require but allow to be null; every other null is dropped, since the
# spec wants an object or array there, or nothing.
_NULLABLE = frozenset({"content", "refusal", "logprobs", "finish_reason"})

# How a stream ends when its worker stopped mid-way (the connection broke, here or behind the
# chat pool's router).
_WORKER_STOPPED = OpenAIError(502, "The model worker stopped mid-stream.",
                              code="worker_unavailable")
_STOPPED_EVENT = sse_event(_WORKER_STOPPED.body()).removesuffix(b"\n\n")


def clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: clean(v) for k, v in obj.items()
            if k not in contract.VLLM_ONLY and (v is not None or k in _NULLABLE)
        }
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


async def relay(call: WorkerCall, m: Meter, served: Served, path: str, body: dict[str, Any],
                include_usage: bool, *, continuous: bool = False, tokens: int = 0) -> Response:
    """Call the vLLM worker with `body` (as the endpoint's `vllm_request` made it; admitted
    with `tokens` unless the route admitted it already) and answer. A stream's closing usage
    event reaches the client only with `include_usage`, and the running usage on each chunk
    only with `continuous` (vLLM's `continuous_usage_stats`), as the client asked."""
    caching = "prefix_caching" in served.entry.capabilities
    if not body.get("stream"):
        # A client that leaves aborts the generation: closing the upstream connection makes
        # vLLM abort the request. (A stream is cancelled the same way, by Starlette.)
        response = await call(served, path, body, tokens=tokens)
        data = clean(response.json())
        data["usage"] = m.usage = normalize_usage(data.get("usage"), caching=caching)
        return JSONResponse(data)
    response = await call(served, path, body, tokens=tokens, stream=True)
    return StreamingResponse(
        _relay_stream(response, include_usage, caching, m, continuous=continuous),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage_span(event: bytes) -> tuple[int, int] | None:
    """Where `,"usage":{...}` sits in a compact chunk: found by bytes, never parsed."""
    start = event.find(contract.USAGE_MARK)
    if start < 0:
        return None
    # The usage object holds numbers, nulls and flat objects, no strings: its end is the first
    # `}` after which every `{` opened inside it has closed (one find, as a rule).
    depth, i = 1, start + len(contract.USAGE_MARK)
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
    return b"data: " + json.dumps(clean(chunk), separators=(",", ":")).encode()


async def _relay_stream(
    response: httpx.Response, include_usage: bool, caching: bool, m: Meter, *,
    continuous: bool = False,
) -> AsyncIterator[bytes]:
    last_usage = b""  # the latest running usage, kept as bytes, parsed only if the client leaves
    finished = False  # the closing usage event was metered
    ended = False  # the worker ended the stream (the client did not leave, the link held)
    broken: str | None = None  # how the stream broke the vLLM contract, if it did
    stopped = False  # the pool router said the worker stopped: a broken stream, no [DONE]
    try:
        async for events in read_events(response.aiter_raw()):
            out = []
            for event in events:
                if stopped and event == contract.DONE:
                    continue
                span = _usage_span(event)
                if span is None and event != contract.DONE:
                    event, problem = _unmarked(event, m)
                    stopped = stopped or event == _STOPPED_EVENT
                    if problem:
                        broken = broken or _contract_broken(problem, event)
                        span = _usage_span(event)
                if span is None:
                    out.append(event)
                elif contract.FINAL in event:
                    finished = True
                    if final := _final_usage(event, include_usage, caching, m):
                        out.append(final)
                else:
                    last_usage = event[span[0] + len(contract.USAGE_MARK) - 1 : span[1]]
                    if m.first_token_at is None and not contract.NO_TOKENS.search(last_usage):
                        m.first_token()
                    out.append(event if continuous else event[: span[0]] + event[span[1] :])
            if out:
                yield b"\n\n".join(out) + b"\n\n"
        ended = True
    except httpx.TransportError as e:
        # Headers are sent; the best left is to end the stream with an error event.
        log.warning("worker stream broke: %s", e)
        m.status_override = 502
        yield sse_event(_WORKER_STOPPED.body())
    finally:
        if not finished:
            _unfinished(m, ended, last_usage, caching, broken)
        await response.aclose()


def _unmarked(event: bytes, m: Meter) -> tuple[bytes, str | None]:
    """The slow path, for an event in which the usage was not found by its bytes: vLLM's
    closing `[DONE]` aside, only an error event should get here. Parsed to tell which, and
    to find a usage vLLM put elsewhere; rewritten in the contract's form if it has one.
    Returns the event and, if it breaks the contract, how."""
    try:
        chunk = json.loads(event.removeprefix(b"data: "))
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        return event, None  # not a chunk (an SSE comment, a keep-alive): passed through
    if "error" in chunk:
        m.status_override = 502  # the worker failed mid-stream; the client did not leave
        return _error_event(chunk["error"]), None
    usage = chunk.pop("usage", None)
    if usage is None:
        return event, "a chunk without usage" if "choices" in chunk else None
    chunk["usage"] = usage  # last, as the contract has it
    compact = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
    return b"data: " + compact, "usage not found by its bytes"


def _error_event(error: Any) -> bytes:
    """vLLM's own mid-stream error event, in OpenAI's envelope: vLLM's `code` is the HTTP
    status as a number, where OpenAI's is a string or null. A pool router's event for a
    replica that stopped mid-stream is told as the router tells a worker that stopped."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    if error.get("type") == contract.POOL_STREAM_BROKEN_TYPE:
        log.warning("worker stream broke behind the pool router: %s", error.get("message"))
        return _STOPPED_EVENT
    envelope = OpenAIError(502, str(error.get("message") or "The model worker failed."))
    if isinstance(error.get("type"), str):
        envelope.type = error["type"]
    if isinstance(error.get("param"), str):
        envelope.param = error["param"]
    if isinstance(error.get("code"), str):
        envelope.code = error["code"]
    return sse_event(envelope.body()).removesuffix(b"\n\n")


def _contract_broken(problem: str, event: bytes) -> str:
    """Logged once per stream: metering is then as exact as the slow path can make it."""
    log.error("vLLM contract broken (verified with vLLM %s): %s; streams are parsed the slow "
              "way. Event: %.300r", contract.VERIFIED_VERSION, problem, event)
    return problem


def _unfinished(m: Meter, ended: bool, last_usage: bytes, caching: bool,
                broken: str | None) -> None:
    """Meter a stream that had no closing usage event. If the client left (or the worker
    failed), the running usage is what it used. If the worker ended it normally, vLLM broke
    the contract: the running usage stands, and with none at all the request is recorded as
    the worker's failure (502), never as a free success."""
    if ended and m.status_override is None:
        if not broken:
            _contract_broken("the stream ended without its usage event", last_usage)
        if not last_usage:
            m.status_override = 502
            m.incomplete = True
    else:
        m.incomplete = True
    if last_usage:
        m.usage = normalize_usage(json.loads(last_usage), caching=caching)
