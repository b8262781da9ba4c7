"""Send a Responses request to vLLM's /v1/responses and relay its answer.

vLLM runs the Responses state machine (templating, tool parsing, structured output, the typed
stream events); the router only reshapes what vLLM writes differently from OpenAI's spec: the
vLLM-only fields, nulls where the spec wants a value or nothing (`error` is required and may be
null; an output text's `logprobs` is an array), and `usage`, normalised as everywhere else.

A stream is relayed event by event. The per-token events (`*.delta`) are recognised by their
`event:` line and passed on untouched; only the few others (the response's lifecycle, an item
or content part opening or closing) are parsed and cleaned, and the closing
`response.completed` (or `.incomplete` / `.failed`) carries the usage that is metered. vLLM
reports no usage before that event, so a stream the client drops is metered from what the
router saw: one output token per delta event (a lower bound: a delta is one engine step's new
text, which may hold more than one token), and the input estimated from the request's size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.router.call_worker import WorkerCall
from serving.router.context import Meter
from serving.router.usage import normalize_response_usage
from serving.sse import read_events
from serving.upstream import vllm_contract as contract
from serving.upstream.served import Served

log = logging.getLogger("serving.router")

# Fields OpenAI's schemas require but allow to be null; every other null is dropped.
_NULLABLE = frozenset({"error", "incomplete_details", "instructions", "metadata",
                       "temperature", "top_p", "strict", "parameters"})
# Events whose `response` is the final one, with usage.
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {k: clean(v) for k, v in obj.items()
               if k not in contract.RESPONSES_VLLM_ONLY and (v is not None or k in _NULLABLE)}
        if out.get("type") == "output_text":
            out.setdefault("logprobs", [])
        return out
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    return obj


def _clean_response(response: dict[str, Any], caching: bool, m: Meter) -> dict[str, Any]:
    """A response object as OpenAI shapes it; its usage, if it has any, is metered."""
    out = clean(response)
    out.setdefault("error", None)
    if response.get("usage") is not None:
        out["usage"] = m.usage = normalize_response_usage(response["usage"], caching=caching)
    return out


async def relay_response(call: WorkerCall, m: Meter, served: Served, path: str,
                         body: dict[str, Any], *, input_estimate: int,
                         tokens: int = 0) -> Response:
    """Call the vLLM worker with `body` (admitted with `tokens` unless the route admitted it
    already) and answer; `input_estimate` meters the input of a stream the client drops."""
    caching = "prefix_caching" in served.entry.capabilities
    if not body.get("stream"):
        # A client that leaves closes the upstream connection, and vLLM aborts the request.
        response = await call(served, path, body, tokens=tokens)
        return JSONResponse(_clean_response(response.json(), caching, m))
    response = await call(served, path, body, tokens=tokens, stream=True)
    return StreamingResponse(
        _relay(response, caching, m, input_estimate),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _rewrite(event: bytes, caching: bool, m: Meter) -> tuple[bytes, bool]:
    """A non-delta event, cleaned; and whether it is the final one (its usage metered)."""
    head, sep, data = event.partition(contract.RESPONSES_DATA)
    if not sep:
        return event, False  # not vLLM's `event:`/`data:` pair: relayed as it is
    payload = json.loads(data)
    response = payload.pop("response", None)
    payload = clean(payload)
    if isinstance(response, dict):
        payload["response"] = _clean_response(response, caching, m)
    final = payload.get("type") in _FINAL
    return head + sep + json.dumps(payload, separators=(",", ":")).encode(), final


def _error_event(sequence_number: int) -> bytes:
    err = {"type": "error", "code": "worker_unavailable",
           "message": "The model worker stopped mid-stream.", "param": None,
           "sequence_number": sequence_number}
    return b"event: error\ndata: " + json.dumps(err).encode() + b"\n\n"


async def _relay(response: httpx.Response, caching: bool, m: Meter,
                 input_estimate: int) -> AsyncIterator[bytes]:
    events_seen = deltas = 0
    finished = False
    try:
        async for events in read_events(response.aiter_raw()):
            out = []
            for event in events:
                events_seen += 1
                newline = event.find(b"\n")
                if event.endswith(contract.RESPONSES_DELTA, 0, newline):
                    deltas += 1
                    if m.first_token_at is None:
                        m.first_token()
                    out.append(event)
                    continue
                rewritten, final = _rewrite(event, caching, m)
                finished = finished or final
                out.append(rewritten)
            yield b"\n\n".join(out) + b"\n\n"
    except httpx.TransportError as e:
        # Headers are sent; the best left is to end the stream with an error event.
        log.warning("worker stream broke: %s", e)
        m.status_override = 502
        yield _error_event(events_seen)
    finally:
        if not finished:
            m.incomplete = True
            m.usage = normalize_response_usage(
                {"input_tokens": input_estimate, "output_tokens": deltas}, caching=caching)
        await response.aclose()
