"""Chat and completions through the real stack (router + vLLM on SmolLM2), as a user would."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket

import pytest

from tests.conftest import CHAT_MODEL
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client, **kwargs):
    kwargs.setdefault("model", CHAT_MODEL)
    kwargs.setdefault("messages", ASK)
    kwargs.setdefault("max_tokens", 16)
    return client.chat.completions.create(**kwargs)


def test_models_lists_the_chat_model_by_public_id(client, http, openai_schema):
    openai_schema(http.get("/v1/models").json(), "ListModelsResponse")
    openai_schema(http.get(f"/v1/models/{CHAT_MODEL}").json(), "Model")
    models = client.models.list()
    assert [m.id for m in models.data] == [CHAT_MODEL]
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_catalog_lists_capabilities(http):
    catalog = http.get("/v1/catalog").json()
    entry = next(m for m in catalog["data"] if m["id"] == CHAT_MODEL)
    assert entry["id"] == CHAT_MODEL and entry["modality"] == "chat"
    assert {"tool_use", "json_schema", "prefix_caching"} <= set(entry["capabilities"])
    # The model card's generation settings, which vLLM applies to fields a request leaves unset.
    assert entry["sampling_defaults"] == {"temperature": 0.2, "top_p": 0.9}
    assert {"/v1/chat/completions", "/v1/messages"} <= set(entry["endpoints"])


def test_the_readme_snippet_gets_a_short_right_answer(client):
    """README's first call sets no sampling fields: at the card's defaults SmolLM2 answers and
    stops (at vLLM's neutral temperature 1.0 it rambled for 100 s into thousands of tokens)."""
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is 2 + 2?"}])
    answer = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", answer
    assert "4" in answer


def test_a_clients_sampling_fields_win_over_the_models_defaults(client):
    """The catalog's defaults fill only what a request leaves unset: temperature 0 is greedy
    whatever the seed; temperature 2 with top_p 1 (far from the defaults 0.2 and 0.9) follows
    the seed: the same seed gives the same text, other seeds other texts."""
    def text(**kwargs) -> str:
        return chat(client, max_tokens=24, **kwargs).choices[0].message.content

    assert len({text(temperature=0, seed=seed) for seed in (1, 2, 3)}) == 1
    hot = [text(temperature=2, top_p=1, seed=seed) for seed in (1, 2, 3)]
    assert len(set(hot)) > 1, hot
    assert text(temperature=2, top_p=1, seed=1) == hot[0]


def test_plain_chat(client, http, openai_schema):
    r = chat(client)
    assert r.model == CHAT_MODEL
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    raw = http.post("/v1/chat/completions",
                    json={"model": CHAT_MODEL, "messages": ASK, "max_tokens": 8})
    body = raw.json()
    openai_schema(body, "CreateChatCompletionResponse")
    assert "system_fingerprint" not in body
    assert {"cache_read_input_tokens", "cache_creation_input_tokens"} <= body["usage"].keys()
    assert raw.headers["x-request-id"].startswith("req_")


def test_stream_without_usage(client, openai_schema, http):
    chunks = list(chat(client, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with http.stream("POST", "/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": ASK, "max_tokens": 4, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        chunk = json.loads(event.removeprefix("data: "))
        openai_schema(chunk, "CreateChatCompletionStreamResponse")
        assert "system_fingerprint" not in chunk


def test_stream_with_usage_ends_with_usage_chunk(client, openai_schema, http):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in content)
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # A prompt long enough to fill cache blocks, sent twice: the second stream's usage event
    # says how much of it came from the cache.
    system = f"Stream {secrets.token_hex(8)}. " + "Tell me about the longest rivers. " * 60
    messages = [{"role": "system", "content": system}, *ASK]

    def usage_event() -> dict:
        with http.stream("POST", "/v1/chat/completions", json={
            "model": CHAT_MODEL, "messages": messages, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        usage_chunk = json.loads(events[-2].removeprefix("data: "))
        openai_schema(usage_chunk, "CreateChatCompletionStreamResponse")
        assert usage_chunk["choices"] == []
        return usage_chunk["usage"]

    first, second = usage_event(), usage_event()
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert first["cache_creation_input_tokens"] > 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached == second["cache_read_input_tokens"]
    assert cached >= first["cache_creation_input_tokens"] * 0.9
    assert 0 < cached <= second["prompt_tokens"]


def test_completions_plain_and_streamed(client, http, openai_schema):
    r = client.completions.create(model=CHAT_MODEL, prompt="The sky is", max_tokens=8)
    assert r.choices[0].text and r.usage.completion_tokens > 0
    openai_schema(http.post("/v1/completions", json={
        "model": CHAT_MODEL, "prompt": "Once upon", "max_tokens": 4}).json(),
        "CreateCompletionResponse")
    chunks = list(client.completions.create(
        model=CHAT_MODEL, prompt="The sky is", max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 8
    assert "".join(c.choices[0].text for c in chunks[:-1])


def test_seed_reproducibility(client):
    kwargs = dict(temperature=1.0, seed=1234, max_tokens=24,
                  messages=[{"role": "user", "content": "Tell me a story."}])
    a = chat(client, **kwargs).choices[0].message.content
    b = chat(client, **kwargs).choices[0].message.content
    assert a == b


def test_stop_sequence(client):
    free = chat(client, temperature=0, max_tokens=24).choices[0].message.content.strip()
    words = free.split(" ")
    assert len(words) >= 2, free
    stopped = chat(client, temperature=0, max_tokens=24, stop=[" " + words[1]])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content.strip() == words[0]


def test_penalties_change_the_output(client):
    kwargs = dict(temperature=0, max_tokens=48,
                  messages=[{"role": "user", "content": "Repeat the word cat many times."}])
    plain = chat(client, **kwargs).choices[0].message.content
    penalised = chat(client, presence_penalty=2.0, frequency_penalty=2.0, **kwargs)
    assert penalised.choices[0].message.content != plain


def test_json_object(client):
    r = chat(client, max_tokens=96, temperature=0,
             messages=[{"role": "user", "content": "Give a country and its capital as JSON."}],
             response_format={"type": "json_object"})
    content = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":  # a 135M model may ramble past max_tokens
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")


# Bounded strings: a tiny model's answer must fit in max_tokens.
CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string", "maxLength": 16},
                   "capital": {"type": "string", "maxLength": 16}},
    "required": ["country", "capital"],
    "additionalProperties": False,
}


def test_json_schema(client):
    schema = CAPITAL_SCHEMA
    r = chat(client, max_tokens=64,
             messages=[{"role": "user", "content": "Give a country and its capital."}],
             response_format={"type": "json_schema",
                              "json_schema": {"name": "capital", "schema": schema,
                                              "strict": True}})
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"country", "capital"}


def test_tools_required(client):
    r = chat(client, max_tokens=64, tools=[WEATHER_TOOL], tool_choice="required",
             messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert r.choices[0].finish_reason == "tool_calls"


def test_tools_named_and_streamed(client):
    chunks = list(chat(
        client, max_tokens=64, stream=True, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "What's the weather in Paris?"}]))
    name, arguments = "", ""
    for c in chunks:
        for call in c.choices[0].delta.tool_calls or [] if c.choices else []:
            name += call.function.name or ""
            arguments += call.function.arguments or ""
    assert name == "get_weather"
    assert set(json.loads(arguments)) == {"city", "unit"}


def test_tool_result_round_trip(client):
    first = chat(client, max_tokens=64, tools=[WEATHER_TOOL], tool_choice="required",
                 messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    message = first.choices[0].message
    call = message.tool_calls[0]
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        message.model_dump(exclude_none=False),  # as the SDK hands it back, nulls included
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = chat(client, max_tokens=32, tools=[WEATHER_TOOL], messages=messages)
    assert second.choices[0].message.content or second.choices[0].message.tool_calls
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_repeated_long_prompt_reads_the_cache(client):
    system = "You answer questions about the solar system in detail. " * 120
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Mars?"}]
    first = chat(client, messages=messages, max_tokens=4).usage
    second = chat(client, messages=messages, max_tokens=4).usage
    assert first.prompt_tokens > 1000
    assert first.cache_creation_input_tokens > 0
    assert second.cache_read_input_tokens > 0
    assert second.cache_read_input_tokens == second.prompt_tokens_details.cached_tokens
    assert second.cache_read_input_tokens >= first.cache_creation_input_tokens * 0.9


def test_the_prompt_cache_is_not_shared_between_keys(stack, client):
    """Key B sending key A's long prompt must not learn from `cached_tokens` that A sent it."""
    from openai import OpenAI

    other = OpenAI(base_url=stack.v1, api_key=stack.other_key, max_retries=0, timeout=120)
    private = f"Case {secrets.token_hex(8)}: " + "A private memo about the merger terms. " * 120
    messages = [{"role": "system", "content": private}, {"role": "user", "content": "Summary?"}]
    sent = chat(client, messages=messages, max_tokens=1).usage
    assert sent.prompt_tokens > 500 and sent.cache_creation_input_tokens > 0
    replayed = chat(other, messages=messages, max_tokens=1).usage
    assert replayed.cache_read_input_tokens == replayed.prompt_tokens_details.cached_tokens == 0
    again = chat(client, messages=messages, max_tokens=1).usage
    assert again.cache_read_input_tokens >= sent.cache_creation_input_tokens * 0.9


def test_n_greater_than_one_returns_one_choice(client):
    r = chat(client, n=2, temperature=0)
    assert len(r.choices) == 1


def test_developer_role_and_max_completion_tokens(client):
    r = chat(client, max_tokens=None, max_completion_tokens=5,
             messages=[{"role": "developer", "content": "Be brief."},
                       {"role": "user", "content": "Hi"}])
    assert r.usage.completion_tokens <= 5


def test_32_concurrent_streams(aclient_factory):
    async def one(client, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=CHAT_MODEL, max_tokens=16, stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"Count to {i}."}])
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            else:
                usage = chunk.usage
        return text, usage.completion_tokens

    async def main():
        client = aclient_factory()
        try:
            return await asyncio.gather(*(one(client, i) for i in range(32)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(text and tokens > 0 for text, tokens in results)


def test_request_id_is_the_clients_when_sane(http):
    r = http.get("/v1/models", headers={"x-request-id": "my-trace-42"})
    assert r.headers["x-request-id"] == "my-trace-42"
    r = http.get("/v1/models", headers={"x-request-id": "bad id\twith tabs"})
    assert r.headers["x-request-id"].startswith("req_")


def _worker_metric(stack, prefix: str) -> float:
    """The sum of the chat worker's (vLLM's) samples whose line starts with `prefix`."""
    import httpx

    metrics = httpx.get(stack.worker_url("chat") + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(prefix))


def _running(stack) -> float:
    return _worker_metric(stack, "vllm:num_requests_running")


def _completed(stack) -> float:
    """Requests vLLM finished by itself (stop or length); one it aborted is not counted."""
    return sum(_worker_metric(stack, f'vllm:request_success_total{{engine="0",finished_reason='
                                     f'"{reason}"') for reason in ("stop", "length"))


def _wait_running(stack, n: int, timeout_s: float = 120) -> float:
    """Wait until the worker runs `n` requests: its gauge may lag what a client has seen."""
    wait_until(lambda: _running(stack) == n, f"the worker to run {n} requests",
               timeout_s=timeout_s)
    return n


def _wait_idle(stack, timeout_s: float = 120) -> float:
    return _wait_running(stack, 0, timeout_s)


# 1500 tokens with the end-of-text tokens banned: a request ends only by reaching its length
# (counted as completed) or by being aborted (not counted), however fast the machine is.
LONG_ESSAY = {"model": CHAT_MODEL, "max_tokens": 1500, "temperature": 1.0, "seed": 1,
              "logit_bias": {"0": -100, "2": -100},  # <|endoftext|>, <|im_end|>
              "messages": [{"role": "user", "content": "Write a very long essay about the "
                            "history of the world, with many chapters."}]}


def _send_raw(stack, path: str, body: dict) -> socket.socket:
    """A request on a bare socket, so the test decides when the client leaves."""
    import httpx

    url = httpx.URL(stack.base_url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((url.host, url.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\n"
                 f"Authorization: Bearer {stack.key}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def leave_mid_generation(stack, path: str, body: dict) -> None:
    """Send a plain (not streamed) request, leave once vLLM runs it, and check that vLLM
    aborted it: it went idle without finishing the request."""
    assert _wait_idle(stack) == 0
    completed = _completed(stack)
    sock = _send_raw(stack, path, body)
    try:
        assert _wait_running(stack, 1) == 1
    finally:
        sock.close()
    assert _wait_idle(stack) == 0
    assert _completed(stack) == completed  # aborted, not finished


def test_client_disconnect_aborts_the_generation(stack, http):
    """A client that leaves mid-generation frees vLLM: the request is aborted, not run to its
    1500 tokens, for a plain request and for a stream. Conditions are waited for, never
    assumed: the generation is seen running before the client leaves."""
    leave_mid_generation(stack, "/v1/chat/completions", LONG_ESSAY)
    completed = _completed(stack)
    with http.stream("POST", "/v1/chat/completions",
                     json={**LONG_ESSAY, "stream": True}) as r:
        # Keep the line iterator: dropping it would close the stream, and so leave at once.
        lines = r.iter_lines()
        first = next(lines)
        assert r.status_code == 200, first
        assert _wait_running(stack, 1) == 1, first
    assert _wait_idle(stack) == 0
    assert _completed(stack) == completed
