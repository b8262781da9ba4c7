"""The Messages stream relay (serving/router/text/messages_relay.py) over streams in the bytes
vLLM 0.32 writes (`message_stream_converter`: `event:`/`data:` pairs, compact JSON, cache
fields left out of message_start). tests/test_e2e_vllm_contract.py runs it over streams
recorded from the real worker; this covers the ways a stream ends, which a healthy worker does
not show: the client leaving, the worker's error event, a broken connection, a stream without
its usage."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from serving.router.context import Meter
from serving.router.text.messages_relay import _relay

SDK_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def event(kind: str, **data: Any) -> bytes:
    return (f"event: {kind}\ndata: " + json.dumps({"type": kind, **data},
                                                   separators=(",", ":")) + "\n\n").encode()


START = event("message_start", message={
    "id": "chatcmpl-1", "type": "message", "role": "assistant", "content": [],
    "model": "smollm2-135m-instruct", "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 30, "output_tokens": 0}})
TEXT = [event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(event("content_block_delta", index=0, delta={"type": "text_delta", "text": w})
          for w in ("Paris", " is", " the")),
        event("content_block_stop", index=0)]
END = [event("message_delta", delta={"stop_reason": "max_tokens", "stop_sequence": None},
             usage={"input_tokens": 14, "output_tokens": 3, "cache_read_input_tokens": 16,
                    "cache_creation_input_tokens": 0}),
       event("message_stop")]
STREAM = [START, *TEXT, *END]


def run(pieces: list[bytes], stop_after: int | None = None,
        broken: bool = False) -> tuple[list[dict[str, Any]], list[bytes], Meter]:
    """The relay over `pieces` (one read each); the client leaves after `stop_after` writes,
    the connection breaks after the last piece if `broken`. The events sent (parsed, and
    raw), and the meter."""
    async def go() -> tuple[bytes, Meter]:
        async def body():
            for piece in pieces:
                yield piece
            if broken:
                raise httpx.ReadError("connection reset")

        m, out = Meter(), []
        relayed = _relay(httpx.Response(200, content=body()), m)
        async for chunk in relayed:
            out.append(chunk)
            if stop_after is not None and len(out) == stop_after:
                await relayed.aclose()
                break
        return b"".join(out), m

    sent, m = asyncio.run(go())
    raw = sent.removesuffix(b"\n\n").split(b"\n\n") if sent else []
    parsed = []
    for e in raw:
        head, _, data = e.partition(b"\ndata: ")
        payload = json.loads(data)
        assert head == b"event: " + payload["type"].encode()
        parsed.append(payload)
    return parsed, raw, m


def test_a_whole_stream_is_relayed_with_ping_and_complete_usage():
    sent, raw, m = run(STREAM)
    assert [e["type"] for e in sent] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop"]
    for e in sent:
        if e["type"] != "ping":
            SDK_EVENT.validate_python(e)
    assert sent[0]["message"]["usage"] == {"input_tokens": 30, "output_tokens": 0,
                                           "cache_read_input_tokens": 0,
                                           "cache_creation_input_tokens": 0}
    assert [r + b"\n\n" for r in raw[3:6]] == TEXT[1:4]  # deltas byte for byte
    assert sent[7]["usage"] == {"input_tokens": 14, "output_tokens": 3,
                                "cache_read_input_tokens": 16, "cache_creation_input_tokens": 0}
    assert m.usage == {"prompt_tokens": 30, "completion_tokens": 3,
                       "cache_read_input_tokens": 16, "cache_creation_input_tokens": 0}
    assert not m.incomplete and m.status_override is None and m.first_token_at is not None


@pytest.mark.parametrize("size", [1, 9, 100])
def test_reads_split_anywhere_give_the_same_events(size: int):
    whole = b"".join(STREAM)
    assert run([whole[i:i + size] for i in range(0, len(whole), size)])[0] == run(STREAM)[0]


def test_a_client_that_leaves_is_metered_with_what_it_saw():
    _, _, m = run(STREAM, stop_after=4)  # message_start+ping, block start, two deltas
    assert m.incomplete and m.status_override is None  # a 499
    assert m.usage["prompt_tokens"] == 30 and m.usage["completion_tokens"] == 2


def test_the_workers_error_event_is_anthropics_and_a_502():
    error = event("error", error={"type": "internal_error", "message": "boom"})
    sent, _, m = run([START, *TEXT[:2], error])
    assert sent[-1] == {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert m.incomplete and m.status_override == 502
    assert m.usage["completion_tokens"] == 1


def test_a_broken_connection_ends_with_an_error_event():
    sent, _, m = run([START, *TEXT[:2]], broken=True)
    assert sent[-1]["type"] == "error" and sent[-1]["error"]["type"] == "api_error"
    assert m.incomplete and m.status_override == 502


def test_a_stream_without_its_usage_is_never_a_free_success(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.ERROR, logger="serving.router"):
        sent, _, m = run([START, *TEXT, END[1]])
    assert "vLLM contract broken" in caplog.text
    assert sent[-1]["type"] == "message_stop"  # the client still gets its answer
    assert m.incomplete and m.status_override == 502 and m.usage["completion_tokens"] == 3
