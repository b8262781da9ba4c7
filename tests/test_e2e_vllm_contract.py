"""The vLLM contract (serving/upstream/vllm_contract.py), checked against the real worker.

Streams are recorded from the stack's vLLM worker, asked for as the router asks for them, and
the relays (chat's and the Responses API's) run over their bytes. Chat: the running usage must
be found in every chunk and cut out cleanly, the closing usage event recognised and metered.
Responses: the per-token events found by their first line and relayed byte for byte, the rest
cleaned into OpenAI's shapes, the closing usage metered. A vLLM upgrade that changes these
bytes fails here, loudly. The same streams, rewritten the ways an upgrade could
change them, check the relay's slow path: metered exactly (or never as a free success) and
logged as a contract break.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from serving.router.context import Meter
from serving.router.text.relay import _relay_stream as _relay
from serving.router.text.relay import _usage_span
from serving.router.text.responses_relay import _relay as _relay_response
from serving.router.usage import normalize_response_usage, normalize_usage
from serving.upstream import vllm_contract as contract
from tests.conftest import CHAT_MODEL

pytestmark = pytest.mark.e2e

BROKEN = "vLLM contract broken"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "additionalProperties": False,
                       "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"]},
    },
}
# What is recorded: plain text, a tool call (its arguments are JSON inside a JSON string, with
# quotes to escape), and the legacy completions endpoint.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": 'Say "usage" and "choices" twice.'}],
        "max_tokens": 12}),
    "chat-tool": ("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [WEATHER_TOOL], "max_tokens": 32,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    "completion": ("/v1/completions", {"prompt": "The capital of France is", "max_tokens": 12}),
}


@pytest.fixture(scope="session")
def recorded(stack) -> dict[str, bytes]:
    """Each stream's bytes as the chat worker sends them to the router."""
    out = {}
    with httpx.Client(base_url=stack.worker_url("chat"), timeout=120) as http:
        for name, (path, body) in REQUESTS.items():
            body = {"model": CHAT_MODEL, "stream": True, "temperature": 0,
                    "stream_options": contract.stream_options(), **body}
            with http.stream("POST", path, json=body) as r:
                assert r.status_code == 200, r.read()
                out[name] = b"".join(r.iter_raw())
    return out


@pytest.fixture(params=list(REQUESTS))
def stream(request: pytest.FixtureRequest, recorded: dict[str, bytes]) -> bytes:
    return recorded[request.param]


def events(stream: bytes) -> list[bytes]:
    assert stream.endswith(b"\n\n")
    return stream.removesuffix(b"\n\n").split(b"\n\n")


def parse(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ")
    return json.loads(event.removeprefix(b"data: "))


def sse(chunks: list[dict[str, Any] | bytes], **dumps: Any) -> bytes:
    """A stream from parsed chunks (or raw events), serialised with json.dumps(**dumps)."""
    return b"".join((c if isinstance(c, bytes) else b"data: " + json.dumps(c, **dumps).encode())
                    + b"\n\n" for c in chunks)


def final_usage(stream: bytes) -> dict[str, Any]:
    return parse(events(stream)[-2])["usage"]


def running_usage(event: bytes) -> dict[str, Any]:
    return parse(event)["usage"]


def run_relay(relay_of: Callable[[httpx.Response, Meter], Any], pieces: list[bytes],
              stop_after: int | None = None) -> tuple[bytes, Meter]:
    """Drive a relay (`relay_of(response, meter)`) over `pieces` as the worker would send
    them, the client leaving after `stop_after` chunks; what it sent, and its meter."""
    async def run() -> tuple[bytes, Meter]:
        async def body():
            for piece in pieces:
                yield piece

        m, out = Meter(), []
        relayed = relay_of(httpx.Response(200, content=body()), m)
        async for chunk in relayed:
            out.append(chunk)
            if stop_after is not None and len(out) == stop_after:
                await relayed.aclose()  # the client went away
                break
        return b"".join(out), m

    return asyncio.run(run())


def pieces_of(stream: bytes, size: int | None) -> list[bytes]:
    """`stream` as `size` bytes a read (default: an event a read)."""
    if size is None:
        return [e + b"\n\n" for e in events(stream)]
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def relay(stream: bytes, include_usage: bool = False, size: int | None = None,
          stop_after: int | None = None) -> tuple[bytes, Meter]:
    """Run the chat relay over `stream`, read `size` bytes at a time."""
    return run_relay(lambda response, m: _relay(response, include_usage, True, m),
                     pieces_of(stream, size), stop_after)


def test_every_chunk_carries_usage_the_relay_finds_by_its_bytes(stream: bytes):
    *chunks, final, done = events(stream)
    assert done == contract.DONE
    assert len(chunks) >= 2  # the role chunk, then generated tokens
    previous = 0
    for event in chunks:
        span = _usage_span(event)
        assert span is not None, event
        assert contract.FINAL not in event
        whole = parse(event)
        usage_bytes = event[span[0] + len(contract.USAGE_MARK) - 1 : span[1]]
        assert json.loads(usage_bytes) == whole.pop("usage")
        assert parse(event[: span[0]] + event[span[1] :]) == whole  # cut out cleanly
        tokens = json.loads(usage_bytes)["completion_tokens"]
        assert bool(contract.NO_TOKENS.search(usage_bytes)) == (tokens == 0)
        assert tokens >= previous
        previous = tokens
    # The closing usage event: recognised by its bytes, and the usage fields metering reads.
    assert _usage_span(final) is not None and contract.FINAL in final
    closing = parse(final)
    assert closing["choices"] == [] and "system_fingerprint" not in closing
    usage = closing["usage"]
    details = {contract.CACHED_TOKENS, contract.CREATED_CACHE_TOKENS}
    if b'"object":"text_completion"' in final:
        details.remove(contract.CREATED_CACHE_TOKENS)  # see vllm_contract.CREATED_CACHE_TOKENS
    assert set(usage[contract.PROMPT_DETAILS]) == details
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == previous > 0


@pytest.mark.parametrize("size", [1, 7, 64, None])
@pytest.mark.parametrize("include_usage", [True, False])
def test_relay_meters_a_recorded_stream_and_passes_the_rest_through(
    stream: bytes, size: int | None, include_usage: bool, caplog: pytest.LogCaptureFixture
):
    out, m = relay(stream, include_usage, size)
    assert BROKEN not in caplog.text
    assert m.usage == normalize_usage(final_usage(stream)) and not m.incomplete
    assert m.first_token_at is not None and m.status_override is None
    *chunks, _final, done = events(stream)
    expected = [parse(c) for c in chunks]
    for chunk in expected:
        del chunk["usage"]
    *sent, last = events(out)
    assert last == done
    if include_usage:
        closing = parse(sent.pop())
        assert closing["choices"] == [] and closing["usage"] == m.usage
    assert [parse(e) for e in sent] == expected


def test_relay_meters_a_dropped_recorded_stream_to_the_token(stream: bytes):
    _, m = relay(stream, stop_after=2)
    assert m.incomplete
    assert m.usage == normalize_usage(running_usage(events(stream)[1]))


def _spaced(chunks: list[dict[str, Any]]) -> bytes:
    return sse(chunks)  # json.dumps's default separators: ", " and ": "


def _usage_first(chunks: list[dict[str, Any]]) -> bytes:
    return sse([{"usage": c.pop("usage"), **c} for c in chunks], separators=(",", ":"))


def _without_running_usage(chunks: list[dict[str, Any]]) -> bytes:
    for chunk in chunks[:-1]:
        del chunk["usage"]
    return sse(chunks, separators=(",", ":"))


# How a vLLM upgrade could change the stream, each with what the relay can still meter.
CHANGES: dict[str, Callable[[list[dict[str, Any]]], bytes]] = {
    "spaced": _spaced,
    "usage-first": _usage_first,
    "no-running-usage": _without_running_usage,
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_changed_stream_is_metered_the_slow_way_and_logged(
    stream: bytes, change: str, include_usage: bool, caplog: pytest.LogCaptureFixture
):
    chunks = [parse(e) for e in events(stream)[:-1]]
    changed = CHANGES[change](chunks) + contract.DONE + b"\n\n"
    with caplog.at_level(logging.ERROR, logger="serving.router"):
        out, m = relay(changed, include_usage, size=64)
    assert caplog.text.count(BROKEN) == 1  # once a stream
    assert m.usage == normalize_usage(final_usage(stream)) and not m.incomplete
    assert m.status_override is None
    *sent, done = events(out)
    assert done == contract.DONE
    if include_usage:
        assert parse(sent.pop())["usage"] == m.usage
    assert sent and all("usage" not in parse(e) for e in sent)


def test_a_stream_without_its_usage_event_is_metered_from_the_running_usage(
    stream: bytes, caplog: pytest.LogCaptureFixture
):
    *chunks, _final, done = events(stream)
    with caplog.at_level(logging.ERROR, logger="serving.router"):
        _, m = relay(sse([*chunks, done]))
    assert BROKEN in caplog.text and "without its usage event" in caplog.text
    assert not m.incomplete and m.status_override is None
    assert m.usage == normalize_usage(running_usage(chunks[-1]))
    assert m.usage["completion_tokens"] > 0


def test_a_stream_without_any_usage_is_never_a_free_success(
    stream: bytes, caplog: pytest.LogCaptureFixture
):
    chunks = [parse(e) for e in events(stream)[:-2]]
    for chunk in chunks:
        del chunk["usage"]
    with caplog.at_level(logging.ERROR, logger="serving.router"):
        out, m = relay(sse([*chunks, contract.DONE]))
    assert BROKEN in caplog.text
    assert [parse(e) for e in events(out)[:-1]] == chunks  # the client still gets its answer
    assert m.incomplete and m.status_override == 502 and m.usage == {}


def test_an_error_event_mid_stream_is_the_workers_failure_not_a_contract_break(
    stream: bytes, caplog: pytest.LogCaptureFixture
):
    # vLLM's own error event, as it ends a stream that failed while generating.
    error = b'data: {"error": {"message": "Internal server error", "type": "InternalServerError'
    error += b'", "param": null, "code": 500}}'
    first, second, *_ = events(stream)
    with caplog.at_level(logging.ERROR, logger="serving.router"):
        out, m = relay(sse([first, second, error, contract.DONE]))
    assert BROKEN not in caplog.text
    # The client gets it in OpenAI's envelope: a string code (or null), not vLLM's number.
    (relayed,) = [parse(e) for e in events(out) if b'"error"' in e]
    assert relayed == {"error": {"message": "Internal server error",
                                 "type": "InternalServerError", "param": None, "code": None}}
    assert m.incomplete and m.status_override == 502
    assert m.usage == normalize_usage(running_usage(second))


def test_a_pool_routers_broken_stream_event_is_a_worker_that_stopped(stream: bytes):
    """smg's own event when the replica behind it stopped mid-stream reaches the client as a
    broken connection to a worker does: 502 `worker_unavailable` and no `[DONE]`, metered to
    the token."""
    error = (b'data: {"error": {"message": "Stream error: error decoding response body", "type": '
             b'"' + contract.POOL_STREAM_BROKEN_TYPE.encode() + b'", "code": null}}')
    first, second, *_ = events(stream)
    out, m = relay(sse([first, second, error, contract.DONE]))  # smg ends it with [DONE]
    assert contract.DONE not in events(out)  # a broken stream, as without a pool router
    (relayed,) = [parse(e) for e in events(out) if b'"error"' in e]
    assert relayed["error"]["code"] == "worker_unavailable"
    assert relayed["error"]["type"] == "server_error"
    assert m.incomplete and m.status_override == 502
    assert m.usage == normalize_usage(running_usage(second))


def test_the_closing_usage_event_carries_no_vllm_only_field(stream: bytes):
    """What vLLM adds to its closing usage event with some features on (per-request metrics,
    a fingerprint) does not reach the client."""
    *body, final, done = events(stream)
    chunk = parse(final)
    assert chunk["choices"] == []
    extra = {**chunk, "metrics": {"arrival_time": 1.0}, "system_fingerprint": "vllm-0.32"}
    compact = json.dumps(extra, separators=(",", ":")).encode()
    out, m = relay(sse([*body, b"data: " + compact, done]), include_usage=True)
    relayed = parse(events(out)[-2])
    assert relayed["usage"] == m.usage and relayed["choices"] == []
    assert not {"metrics", "system_fingerprint"} & relayed.keys()


# --- the Responses API ------------------------------------------------------------------------

# Recorded as the router asks: not stored, a text answer and a forced function call.
RESPONSES_REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"input": [{"role": "user", "content": "Name three colours."}],
             "max_output_tokens": 12},
    "tool": {"input": "What's the weather in Paris?", "max_output_tokens": 32,
             "tools": [{"type": "function", "name": "get_weather", "strict": True,
                        "parameters": WEATHER_TOOL["function"]["parameters"]}],
             "tool_choice": {"type": "function", "name": "get_weather"}},
}
INPUT_ESTIMATE = 40  # what the route would have estimated from the request's size


def record_streams(stack, path: str, requests: dict[str, dict[str, Any]],
                   **common: Any) -> dict[str, bytes]:
    """The raw bytes of the chat worker's stream for each request, greedy."""
    out = {}
    with httpx.Client(base_url=stack.worker_url("chat"), timeout=120) as http:
        for name, body in requests.items():
            body = {"model": CHAT_MODEL, "stream": True, "temperature": 0, **common, **body}
            with http.stream("POST", path, json=body) as r:
                assert r.status_code == 200, r.read()
                out[name] = b"".join(r.iter_raw())
    return out


@pytest.fixture(scope="session")
def recorded_responses(stack) -> dict[str, bytes]:
    return record_streams(stack, "/v1/responses", RESPONSES_REQUESTS, store=False)


@pytest.fixture(params=list(RESPONSES_REQUESTS))
def response_stream(request: pytest.FixtureRequest, recorded_responses: dict[str, bytes]
                    ) -> bytes:
    return recorded_responses[request.param]


def typed(event: bytes) -> tuple[str, dict[str, Any]]:
    """An `event:`/`data:` pair of the Responses stream."""
    head, sep, data = event.partition(contract.RESPONSES_DATA)
    assert sep and head.startswith(b"event: "), event
    return head.removeprefix(b"event: ").decode(), json.loads(data)


def relay_responses(stream: bytes, size: int | None = None,
                    stop_after: int | None = None) -> tuple[bytes, Meter]:
    return run_relay(lambda response, m: _relay_response(response, True, m, INPUT_ESTIMATE),
                     pieces_of(stream, size), stop_after)


def test_responses_stream_events_are_as_the_relay_expects(response_stream: bytes):
    """Every event is an `event:`/`data:` pair whose type names it; the per-token ones end in
    `.delta` on their first line; usage comes only in the closing event."""
    seen = [typed(e) for e in events(response_stream)]
    assert seen[0][0] == "response.created" and seen[-1][0] == "response.completed"
    for name, data in seen:
        assert data["type"] == name
        first_line = f"event: {name}".encode()
        assert first_line.endswith(contract.RESPONSES_DELTA) == name.endswith(".delta")
        if name != "response.completed":
            assert (data.get("response") or {}).get("usage") is None
    assert any(name.endswith(".delta") for name, _ in seen)
    assert seen[-1][1]["response"]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("size", [1, 7, 64, None])
def test_responses_relay_cleans_a_recorded_stream_and_meters_its_usage(
    response_stream: bytes, size: int | None, openai_schema
):
    out, m = relay_responses(response_stream, size)
    assert not m.incomplete and m.first_token_at is not None
    final = typed(events(response_stream)[-1])[1]["response"]
    assert m.usage == normalize_response_usage(final["usage"])
    sent, original = events(out), events(response_stream)
    assert [typed(e)[0] for e in sent] == [typed(e)[0] for e in original]
    for relayed, came in zip(sent, original, strict=True):
        name, data = typed(relayed)
        if name.endswith(".delta"):
            assert relayed == came  # byte for byte, never parsed
        openai_schema(data, "ResponseStreamEvent")
        response = data.get("response")
        if response is not None:
            assert not contract.RESPONSES_VLLM_ONLY & response.keys()
            assert "error" in response
    assert typed(sent[-1])[1]["response"]["usage"] == m.usage


def test_responses_relay_meters_a_dropped_recorded_stream_from_what_it_saw(
    response_stream: bytes
):
    original = events(response_stream)
    first_delta = next(i for i, e in enumerate(original) if typed(e)[0].endswith(".delta"))
    out, m = relay_responses(response_stream, stop_after=first_delta + 2)
    assert m.incomplete
    deltas = sum(typed(e)[0].endswith(".delta") for e in events(out))
    assert deltas >= 1
    assert (m.usage["input_tokens"], m.usage["output_tokens"]) == (INPUT_ESTIMATE, deltas)


# --- Anthropic's Messages API -----------------------------------------------------------------

# Recorded as the router asks: a text answer and a forced tool call (input_json_delta).
MESSAGES_REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"messages": [{"role": "user", "content": "Name three colours."}],
             "max_tokens": 12},
    "tool": {"messages": [{"role": "user", "content": "What's the weather in Paris?"}],
             "max_tokens": 32,
             "tools": [{"name": "get_weather",
                        "input_schema": WEATHER_TOOL["function"]["parameters"]}],
             "tool_choice": {"type": "tool", "name": "get_weather"}},
}


@pytest.fixture(scope="session")
def recorded_messages(stack) -> dict[str, bytes]:
    return record_streams(stack, "/v1/messages", MESSAGES_REQUESTS)


@pytest.fixture(params=list(MESSAGES_REQUESTS))
def message_stream(request: pytest.FixtureRequest, recorded_messages: dict[str, bytes]
                   ) -> bytes:
    return recorded_messages[request.param]


def test_messages_stream_events_are_as_the_relay_expects(message_stream: bytes):
    """`event:`/`data:` pairs; per-token events are `content_block_delta`, found by their
    first line; usage in message_start (the input) and the final message_delta only; no ping."""
    seen = [typed(e) for e in events(message_stream)]
    names = [name for name, _ in seen]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "ping" not in names and "content_block_delta" in names
    for (name, data), raw in zip(seen, events(message_stream), strict=True):
        assert data["type"] == name
        assert raw.startswith(contract.MESSAGES_DELTA_EVENT) == (name == "content_block_delta")
        if name not in ("message_start", "message_delta"):
            assert "usage" not in data and "usage" not in (data.get("message") or {})
    assert seen[0][1]["message"]["usage"]["input_tokens"] > 0
    assert seen[-2][1]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("size", [1, 7, 64, None])
def test_messages_relay_completes_a_recorded_stream_and_meters_its_usage(
    message_stream: bytes, size: int | None, caplog: pytest.LogCaptureFixture
):
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    from serving.router.text.messages_relay import _relay as _relay_message

    out, m = run_relay(lambda response, meter: _relay_message(response, meter),
                       pieces_of(message_stream, size))
    assert BROKEN not in caplog.text
    assert not m.incomplete and m.first_token_at is not None
    original, sent = events(message_stream), events(out)
    names = [typed(e)[0] for e in sent]
    assert names == [n for e in original for n in
                     ([typed(e)[0], "ping"] if typed(e)[0] == "message_start" else [typed(e)[0]])]
    assert [e for e in sent if e.startswith(contract.MESSAGES_DELTA_EVENT)] == \
        [e for e in original if e.startswith(contract.MESSAGES_DELTA_EVENT)]
    sdk = TypeAdapter(RawMessageStreamEvent)
    for e in sent:
        if typed(e)[0] != "ping":
            sdk.validate_python(typed(e)[1])
    usage = typed(sent[-2])[1]["usage"]
    fields = ("input_tokens", "output_tokens", "cache_read_input_tokens",
              "cache_creation_input_tokens")
    assert set(usage) == set(fields)
    assert set(typed(sent[0])[1]["message"]["usage"]) == set(fields)
    assert m.usage == {
        "prompt_tokens": usage["input_tokens"] + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"]}
    if any(b'"input_json_delta"' in e for e in sent):
        partial = "".join(typed(e)[1]["delta"]["partial_json"] for e in sent
                          if b'"input_json_delta"' in e)
        assert isinstance(json.loads(partial), dict)


def test_messages_relay_meters_a_dropped_recorded_stream_from_what_it_saw(
    message_stream: bytes
):
    from serving.router.text.messages_relay import _relay as _relay_message

    original = events(message_stream)
    first_delta = next(i for i, e in enumerate(original)
                       if e.startswith(contract.MESSAGES_DELTA_EVENT))
    out, m = run_relay(lambda response, meter: _relay_message(response, meter),
                       pieces_of(message_stream, None), stop_after=first_delta + 1)
    assert m.incomplete and m.status_override is None
    deltas = sum(e.startswith(contract.MESSAGES_DELTA_EVENT) for e in events(out))
    assert deltas >= 1 and m.usage["completion_tokens"] == deltas
    start_usage = typed(original[0])[1]["message"]["usage"]
    assert m.usage["prompt_tokens"] >= start_usage["input_tokens"] > 0
