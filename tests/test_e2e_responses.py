"""The Responses API through the real stack (router + vLLM on SmolLM2), with the openai client
and an OpenAI Agents SDK agent on its default (Responses) model."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import CHAT_MODEL
from tests.support.wait import wait_until
from tests.test_e2e_chat import (
    CAPITAL_SCHEMA,
    LONG_ESSAY,
    _completed,
    _wait_idle,
    _wait_running,
    leave_mid_generation,
)

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "strict": True,
                "description": "Get the current weather in a city", "parameters": WEATHER}
VLLM_ONLY = {"kv_transfer_params", "ec_transfer_params", "input_messages", "output_messages"}


def respond(client, **kwargs):
    kwargs.setdefault("model", CHAT_MODEL)
    kwargs.setdefault("input", "What is the capital of France?")
    kwargs.setdefault("max_output_tokens", 16)
    return client.responses.create(**kwargs)


def sse(http: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    """A streamed answer's events as (event line, data), read raw."""
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        blocks = r.read().decode().strip().split("\n\n")
    events = []
    for block in blocks:
        head, data = block.split("\n", 1)
        events.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def ledger(stack, since: float, until) -> dict[tuple[str, str, str], dict]:
    """The ledger's /v1/responses rows since `since`, by (key, status), once `until(rows)`."""
    with httpx.Client(base_url=stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {stack.admin_key}"}) as admin:
        def rows() -> dict:
            r = admin.get("/v1/usage", params={"since": str(since), "by": "key,endpoint,status"})
            assert r.status_code == 200, r.text
            found = {(row["key"], str(row["status"])): row for row in r.json()["data"]
                     if row["endpoint"] == "/v1/responses"}
            return found if until(found) else {}

        return wait_until(rows, "the rows in the ledger", timeout_s=30, every_s=0.2)


def test_create(client, http, openai_schema):
    r = respond(client)
    assert r.model == CHAT_MODEL and r.status in ("completed", "incomplete")
    assert r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert 0 <= r.usage.input_tokens_details.cached_tokens <= r.usage.input_tokens

    raw = http.post("/v1/responses", json={
        "model": CHAT_MODEL, "instructions": "Answer in one word.", "max_output_tokens": 8,
        "temperature": 0, "top_p": 1, "input": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Capital of Italy?"}]}]})
    body = raw.json()
    openai_schema(body, "Response")
    assert not VLLM_ONLY & body.keys() and body["error"] is None
    assert body["instructions"] == "Answer in one word." and body["temperature"] == 0
    usage = body["usage"]
    assert set(usage["input_tokens_details"]) == {"cached_tokens", "cache_write_tokens"}
    assert usage["cache_read_input_tokens"] == usage["input_tokens_details"]["cached_tokens"]
    assert raw.headers["x-request-id"].startswith("req_")


def test_the_same_prefix_is_read_from_the_cache(client):
    """The usage reports vLLM's prefix-cache reads: a long shared prefix, asked twice."""
    instructions = "You are a helpful assistant. " * 40
    respond(client, instructions=instructions, max_output_tokens=2)
    again = respond(client, instructions=instructions, max_output_tokens=2)
    assert again.usage.input_tokens_details.cached_tokens > 0


def test_stream(client, http, openai_schema):
    with client.responses.stream(model=CHAT_MODEL, input="Say hello.",
                                 max_output_tokens=12) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas and "".join(deltas) == final.output_text
    # Each delta is one decoding step's text, one token or more (none for the end token).
    assert final.usage.output_tokens >= len(deltas)
    assert final.usage.input_tokens > 0

    events = sse(http, {"model": CHAT_MODEL, "input": "Say hello.", "max_output_tokens": 6})
    for name, data in events:
        assert name == data["type"]
        openai_schema(data, "ResponseStreamEvent")
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    done = next(d for n, d in events if n == "response.output_text.done")
    assert done["text"] == "".join(d["delta"] for n, d in events
                                   if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert not VLLM_ONLY & final.keys()
    assert final["usage"]["output_tokens"] >= names.count("response.output_text.delta")


def test_function_tool_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = respond(client, input=ask, tools=[WEATHER_TOOL], tool_choice="required",
                max_output_tokens=60)
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER)

    # The answer goes back with the call and its output, as an agent loop does.
    follow = respond(client, input=[*ask, call.model_dump(exclude_none=True),
                                    {"type": "function_call_output", "call_id": call.call_id,
                                     "output": "Sunny, 21 C"}],
                     tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=30)
    assert [item.type for item in follow.output] == ["message"]
    assert follow.output_text
    assert follow.usage.input_tokens > r.usage.input_tokens  # the call and its output count


def test_function_tool_streamed(http, openai_schema):
    events = sse(http, {"model": CHAT_MODEL, "input": "What is the weather in Paris?",
                        "tools": [WEATHER_TOOL],
                        "tool_choice": {"type": "function", "name": "get_weather"},
                        "max_output_tokens": 60})
    for _, data in events:
        openai_schema(data, "ResponseStreamEvent")
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    jsonschema.validate(json.loads(done["arguments"]), WEATHER)
    (item,) = events[-1][1]["response"]["output"]
    assert item["type"] == "function_call" and item["arguments"] == done["arguments"]


def test_json_schema_and_json_object(client):
    r = respond(client, input="Give the capital of France as JSON.", max_output_tokens=60,
                temperature=0, text={"format": {"type": "json_schema", "name": "capital",
                                                "schema": CAPITAL_SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), CAPITAL_SCHEMA)
    assert r.text.format.type == "json_schema"

    r = respond(client, input="Give the capital of France as JSON.", max_output_tokens=60,
                temperature=0, text={"format": {"type": "json_object"}})
    assert r.output_text.lstrip().startswith("{")  # JSON, perhaps cut at the token limit
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)


def test_unsupported_parts_are_400s_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as stored:
        respond(client, store=True)
    assert stored.value.body["param"] == "store"
    assert "does not store responses" in stored.value.body["message"]
    with pytest.raises(openai.BadRequestError) as previous:
        respond(client, previous_response_id="resp_123")
    assert previous.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as image:
        respond(client, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}])
    # The model takes images, but this one is a truncated PNG: refused by the router.
    assert (image.value.body["param"], image.value.body["code"]) == \
        ("input[0].content[1]", "invalid_image")
    with pytest.raises(openai.BadRequestError) as retrieve:
        client.responses.retrieve("resp_123")
    assert retrieve.value.body["code"] == "unsupported_endpoint"


def test_agents_sdk_agent_with_a_function_tool(stack):
    """An Agents SDK agent on its default model (the Responses API) calls its tool, gets the
    tool's output back to the model and finishes; both model calls are in the ledger."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIProvider,
        RunConfig,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny and 21 C in {city}."

    # The other key: the ledger rows of this run are its only /v1/responses traffic.
    client = openai.AsyncOpenAI(base_url=stack.v1, api_key=stack.other_key, max_retries=0,
                                timeout=120)
    # The SDK's default provider, on its default (Responses) model, with this stack's client.
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client))
    agent = Agent(
        name="weather", instructions="Answer with the weather tool.", tools=[get_weather],
        model=CHAT_MODEL,
        # A 135M model does not choose a tool by itself; naming it makes the call certain.
        # The SDK then resets the choice so the second turn answers in text.
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=40, temperature=0),
    )
    since = time.time()

    async def run():
        result = await Runner.run(agent, "What is the weather in Paris?", max_turns=3,
                                  run_config=config)
        streamed = Runner.run_streamed(agent, "What is the weather in Rome?", max_turns=3,
                                       run_config=config)
        kinds = [event.type async for event in streamed.stream_events()]
        await client.close()
        return result, streamed, kinds

    result, streamed, kinds = asyncio.run(run())
    assert len(calls) == 2 and all(city.strip() for city in calls)
    for run_result in (result, streamed):
        assert [item.type for item in run_result.new_items] == [
            "tool_call_item", "tool_call_output_item", "message_output_item"]
        assert isinstance(run_result.final_output, str) and run_result.final_output
        assert len(run_result.raw_responses) == 2
    assert "raw_response_event" in kinds

    used = [r.usage for r in (*result.raw_responses, *streamed.raw_responses)]
    rows = ledger(stack, since, lambda rows: rows.get(("env-2", "200"), {}).get("requests") == 4)
    row = rows[("env-2", "200")]
    assert row["requests"] == 4
    assert row["prompt_tokens"] == sum(u.input_tokens for u in used)
    assert row["completion_tokens"] == sum(u.output_tokens for u in used)
    assert row["cache_read_tokens"] == sum(u.input_tokens_details.cached_tokens for u in used)


def test_a_client_that_leaves_aborts_the_generation_and_is_metered(stack, http):
    """A client that leaves frees vLLM: the request is aborted, not run to its 1500 tokens,
    for a plain request and for a stream, each seen running before the client leaves. The
    stream is in the ledger as a 499 with the tokens it was sent."""
    body = {"model": CHAT_MODEL, "input": LONG_ESSAY["messages"][0]["content"],
            "max_output_tokens": 1500, "temperature": 1.0, "seed": 1}
    leave_mid_generation(stack, "/v1/responses", body)
    completed = _completed(stack)
    since = time.time()
    deltas = 0
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            deltas += line == "event: response.output_text.delta"
            if deltas == 5:
                assert _wait_running(stack, 1) == 1
                break
    assert _wait_idle(stack) == 0
    assert _completed(stack) == completed
    rows = ledger(stack, since, lambda rows: ("env-1", "499") in rows)
    dropped = rows[("env-1", "499")]
    assert dropped["requests"] == 1
    assert 5 <= dropped["completion_tokens"] < 1500 and dropped["prompt_tokens"] > 0
