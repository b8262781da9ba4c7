"""Anthropic's Messages API through the real stack (router + vLLM on SmolLM2), with the
`anthropic` SDK changing only `base_url`. The stack allows image URLs on 127.0.0.1
(tests/conftest.py), where this file's image server listens."""

from __future__ import annotations

import base64
import json
import secrets
import time

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount

from tests.conftest import CHAT_MODEL
from tests.support.images import encoded, serve_images
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def claude(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.key, max_retries=0,
                               timeout=120)


def test_create_with_system_stop_and_usage(claude):
    message = claude.messages.create(
        model=CHAT_MODEL, max_tokens=24, system="You answer in one short sentence.",
        stop_sequences=["\n\n"],
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    Message.model_validate(message.model_dump())
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_read_input_tokens is not None
    assert message.usage.cache_creation_input_tokens is not None
    counted = claude.messages.count_tokens(
        model=CHAT_MODEL, system="You answer in one short sentence.",
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    MessageTokensCount.model_validate(counted.model_dump())
    usage = message.usage
    assert counted.input_tokens == (usage.input_tokens + usage.cache_read_input_tokens
                                    + usage.cache_creation_input_tokens)


def test_sdk_errors(claude, stack):
    with pytest.raises(anthropic.BadRequestError):
        claude.post("/v1/messages", cast_to=Message, body={
            "model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=4,
                               messages=[{"role": "user", "content": "hi"}])
    wrong = anthropic.Anthropic(base_url=stack.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=CHAT_MODEL, max_tokens=4,
                              messages=[{"role": "user", "content": "hi"}])


WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "additionalProperties": False,
                            "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}
GREEDY = {"temperature": 0}
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens")


def usage_of(message: Message) -> dict[str, int]:
    return {f: getattr(message.usage, f) for f in USAGE_FIELDS}


def test_stream_helper_every_event_and_the_final_message(claude):
    # anthropic 2.17's helpers take no `temperature` argument: sent as an extra field.
    with claude.messages.stream(model=CHAT_MODEL, max_tokens=12, extra_body=GREEDY,
                                messages=[{"role": "user", "content": "Name three colours."}]
                                ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for kind in ("content_block_start", "content_block_delta", "text", "content_block_stop",
                 "message_delta"):
        assert kind in kinds, kinds
    Message.model_validate(final.model_dump())
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")
    usage = usage_of(final)
    assert all(isinstance(v, int) for v in usage.values()), usage
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 0
    assert 0 < usage["output_tokens"] <= 12
    # The same request unstreamed reports the same usage (greedy, same prompt).
    whole = claude.messages.create(model=CHAT_MODEL, max_tokens=12, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Name three colours."}])
    assert whole.usage.output_tokens == usage["output_tokens"]


def test_ping_is_sent_after_message_start(stack):
    body = {"model": CHAT_MODEL, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", stack.base_url + "/v1/messages", json=body, timeout=120,
                      headers={"x-api-key": stack.key, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_tool_use_streamed_input_is_json_and_a_tool_result_round_trip(claude, choice):
    with claude.messages.stream(model=CHAT_MODEL, max_tokens=48, tools=[WEATHER],
                                tool_choice=choice, messages=USER) as stream:
        partial = "".join(e.delta.partial_json for e in stream
                          if e.type == "content_block_delta"
                          and e.delta.type == "input_json_delta")
        final = stream.get_final_message()
    (call,) = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and json.loads(partial) == call.input
    assert isinstance(call.input["city"], str)
    assert final.stop_reason == "tool_use"
    answer = claude.messages.create(
        model=CHAT_MODEL, max_tokens=16, tools=[WEATHER],
        messages=[*USER, {"role": "assistant", "content": [
                      {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "Sunny, 21 C."}]}])
    Message.model_validate(answer.model_dump())
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens > \
        final.usage.input_tokens + final.usage.cache_read_input_tokens


PNG = encoded("PNG")


def image_message(claude, source: dict) -> Message:
    return claude.messages.create(model=CHAT_MODEL, max_tokens=2, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image", "source": source}]}])


def test_images_base64_and_url_add_tokens_bad_ones_are_400s(claude):
    def tokens(message: Message) -> int:
        u = message.usage
        return u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens

    plain = claude.messages.create(model=CHAT_MODEL, max_tokens=2, messages=[
        {"role": "user", "content": "What is this?"}])
    inline = image_message(claude, {"type": "base64", "media_type": "image/png",
                                    "data": base64.b64encode(PNG).decode()})
    assert tokens(inline) > tokens(plain)
    with serve_images({"/red.png": PNG}) as url:
        fetched = image_message(claude, {"type": "url", "url": f"{url}/red.png"})
    assert tokens(fetched) == tokens(inline)
    for source in ({"type": "base64", "media_type": "image/png",
                    "data": base64.b64encode(PNG[: len(PNG) // 2]).decode()},
                   {"type": "url", "url": "http://10.0.0.1/cat.png"},
                   {"type": "url", "url": "http://169.254.169.254/latest/"}):
        with pytest.raises(anthropic.BadRequestError) as e:
            image_message(claude, source)
        assert e.value.body["type"] == "error"
        assert e.value.body["error"]["type"] == "invalid_request_error"
        assert e.value.body["error"]["message"].startswith("messages[0].content[1]:")


def test_a_repeated_long_system_prompt_reads_the_cache_another_key_none(claude, stack):
    system = f"Case {secrets.token_hex(8)}: " + "A private memo about the merger terms. " * 120
    ask = {"model": CHAT_MODEL, "max_tokens": 1, "system": system,
           "messages": [{"role": "user", "content": "Summary?"}]}
    first = claude.messages.create(**ask).usage
    assert first.cache_creation_input_tokens > 0
    other = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.other_key,
                                max_retries=0, timeout=120)
    assert other.messages.create(**ask).usage.cache_read_input_tokens == 0
    again = claude.messages.create(**ask).usage
    assert again.cache_read_input_tokens >= first.cache_creation_input_tokens * 0.9


def test_the_ledger_holds_the_sdks_usage_and_a_dropped_stream(stack):
    """The admin key's traffic on /v1/messages: only this test sends it."""
    admin = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.admin_key,
                                max_retries=0, timeout=120)
    since = time.time()
    ask = {"model": CHAT_MODEL, "max_tokens": 8,
           "messages": [{"role": "user", "content": "Count from one to twenty."}]}
    whole = usage_of(admin.messages.create(**ask))
    with admin.messages.stream(**ask) as stream:
        streamed = usage_of(stream.get_final_message())
    # A stream the client leaves after its first text: aborted, and metered as a 499.
    with admin.messages.stream(**{**ask, "max_tokens": 200}) as stream:
        next(e for e in stream if e.type == "content_block_delta")

    def rows() -> dict | None:
        r = httpx.get(stack.base_url + "/v1/usage", timeout=30,
                      params={"since": str(since), "by": "key,endpoint,status"},
                      headers={"Authorization": f"Bearer {stack.admin_key}"})
        assert r.status_code == 200, r.text
        found = {str(row["status"]): row for row in r.json()["data"]
                 if row["key"] == "admin-1" and row["endpoint"] == "/v1/messages"}
        return found if "499" in found else None

    found = wait_until(rows, "the dropped stream in the ledger", timeout_s=120, every_s=0.2)
    done = found["200"]
    assert done["requests"] == 2
    total_in = sum(u["input_tokens"] + u["cache_read_input_tokens"]
                   + u["cache_creation_input_tokens"] for u in (whole, streamed))
    assert done["prompt_tokens"] == total_in
    assert done["completion_tokens"] == whole["output_tokens"] + streamed["output_tokens"]
    assert done["cache_read_tokens"] == (whole["cache_read_input_tokens"]
                                         + streamed["cache_read_input_tokens"])
    dropped = found["499"]
    assert dropped["requests"] == 1 and 0 < dropped["completion_tokens"] < 200
    assert dropped["prompt_tokens"] > 0
