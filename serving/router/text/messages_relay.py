"""Send a Messages request to vLLM's /v1/messages and relay its answer in Anthropic's shape.

vLLM writes the message and its typed stream events itself (`vllm/entrypoints/anthropic/`);
the router only completes what vLLM leaves out and meters the usage:

- `usage` always carries both cache fields (vLLM leaves them out when it has no count yet);
- a stream gets Anthropic's `ping` after `message_start` (vLLM sends none);
- vLLM's mid-stream `error` event has type `internal_error`, which Anthropic's SDKs do not
  know: it becomes `api_error`.

A stream is relayed event by event. The per-token events (`content_block_delta`: text and tool
input JSON) are recognised by their `event:` line and passed on untouched; only the few others
are parsed. vLLM puts the input's usage in `message_start` and the whole usage in the final
`message_delta`, and none in between, so a stream the client drops is metered with the input
vLLM reported and one output token per delta event (a lower bound: a delta is one engine
step's text, which may hold more than one token). What this relies on in vLLM is fenced in
`vllm_contract` (the `MESSAGES_*` names).
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
from serving.sse import read_events
from serving.upstream import vllm_contract as contract
from serving.upstream.served import Served

log = logging.getLogger("serving.router")

CACHE_FIELDS = ("cache_read_input_tokens", "cache_creation_input_tokens")
PING = b'event: ping\ndata: {"type":"ping"}'


def complete_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic's usage with all four counts (vLLM leaves out the cache ones it lacks)."""
    usage = dict(usage or {})
    for field in ("input_tokens", "output_tokens", *CACHE_FIELDS):
        usage[field] = int(usage.get(field) or 0)
    return usage


def meter_usage(m: Meter, usage: dict[str, Any]) -> None:
    """The ledger's prompt is every input token, as on chat: Anthropic's `input_tokens` leaves
    out the ones read from and written to the cache."""
    read, created = (int(usage.get(field) or 0) for field in CACHE_FIELDS)
    m.usage = {"prompt_tokens": int(usage.get("input_tokens") or 0) + read + created,
               "completion_tokens": int(usage.get("output_tokens") or 0),
               "cache_read_input_tokens": read, "cache_creation_input_tokens": created}


async def relay_message(call: WorkerCall, m: Meter, served: Served, path: str,
                        body: dict[str, Any]) -> Response:
    """Call the (admitted) request's vLLM worker with `body` and answer."""
    if not body.get("stream"):
        # A client that leaves closes the upstream connection, and vLLM aborts the request.
        message = (await call(served, path, body)).json()
        message["usage"] = complete_usage(message.get("usage"))
        meter_usage(m, message["usage"])
        return JSONResponse(message)
    response = await call(served, path, body, stream=True)
    return StreamingResponse(
        _relay(response, m),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _StreamState:
    """What the relay learnt of one stream, for metering it however it ends."""

    def __init__(self) -> None:
        self.input: dict[str, Any] = {}  # message_start's usage: the input's counts
        self.deltas = 0
        self.finished = False  # the final message_delta (with the whole usage) was metered
        self.failed = False  # vLLM sent an error event


def _rewrite(event: bytes, state: _StreamState, m: Meter) -> list[bytes]:
    """A non-delta event as the client gets it (with a ping after message_start)."""
    head, sep, data = event.partition(contract.MESSAGES_DATA)
    if not sep:
        return [event]  # not an `event:`/`data:` pair: relayed as it is
    payload = json.loads(data)
    kind = payload.get("type")
    if kind == "message_start" and isinstance(payload.get("message"), dict):
        usage = payload["message"]["usage"] = complete_usage(payload["message"].get("usage"))
        state.input = usage
    elif kind == "message_delta":
        payload["usage"] = complete_usage({**state.input, **(payload.get("usage") or {})})
        meter_usage(m, payload["usage"])
        state.finished = True
    elif kind == "error":
        state.failed = True
        error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
        if error.get("type") == contract.MESSAGES_VLLM_ERROR_TYPE:
            payload["error"] = {**error, "type": "api_error"}
    else:
        return [event]
    out = [head + sep + json.dumps(payload, separators=(",", ":")).encode()]
    return [*out, PING] if kind == "message_start" else out


def _error_event() -> bytes:
    error = {"type": "error", "error": {"type": "api_error",
                                        "message": "The model worker stopped mid-stream."}}
    return b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"


async def _relay(response: httpx.Response, m: Meter) -> AsyncIterator[bytes]:
    state = _StreamState()
    try:
        async for events in read_events(response.aiter_raw()):
            out: list[bytes] = []
            for event in events:
                if event.startswith(contract.MESSAGES_DELTA_EVENT):
                    state.deltas += 1
                    if m.first_token_at is None:
                        m.first_token()
                    out.append(event)
                    continue
                out.extend(_rewrite(event, state, m))
            if out:
                yield b"\n\n".join(out) + b"\n\n"
        if not state.finished and not state.failed:
            # The worker ended the stream without its usage: vLLM broke the contract. Never
            # a free success: recorded as the worker's failure, with what was seen.
            log.error("vLLM contract broken (verified with vLLM %s): a messages stream ended "
                      "without its final message_delta", contract.VERIFIED_VERSION)
            state.failed = True
    except httpx.TransportError as e:
        # Headers are sent; the best left is to end the stream with an error event.
        log.warning("worker stream broke: %s", e)
        state.failed = True
        yield _error_event()
    finally:
        if state.failed:
            m.status_override = 502
        if not state.finished:
            m.incomplete = True  # the client left (a 499), or the worker failed (a 502)
            meter_usage(m, {**state.input, "output_tokens": state.deltas})
        await response.aclose()
