"""The /v1/messages request model: what it takes, and the field it names when it refuses."""

import pytest
from pydantic import ValidationError

from serving.protocol.messages import CountTokensRequest, MessagesRequest

BASE = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _loc(body: dict) -> tuple:
    with pytest.raises(ValidationError) as caught:
        MessagesRequest.model_validate(body)
    return caught.value.errors()[0]["loc"]


def test_full_supported_request_parses():
    request = MessagesRequest.model_validate({
        **BASE,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "http://x/a.png"}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "get", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
        ],
        "tools": [{"name": "get", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get"},
        "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "metadata": {"user_id": "u"}, "stream": True,
    })
    assert request.stream and request.tool_choice.name == "get"


def test_max_tokens_is_required():
    body = dict(BASE)
    del body["max_tokens"]
    assert _loc(body) == ("max_tokens",)


def test_count_tokens_takes_no_max_tokens():
    body = dict(BASE)
    del body["max_tokens"]
    assert CountTokensRequest.model_validate(body).model == "m"


@pytest.mark.parametrize("extra, field", [
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"mcp_servers": [{}]}, "mcp_servers"),
    ({"unknown": 1}, "unknown"),
    ({"temperature": 1.5}, "temperature"),
])
def test_unsupported_fields_are_named(extra, field):
    assert _loc({**BASE, **extra})[0] == field


def test_bad_role_is_named():
    assert _loc({**BASE, "messages": [{"role": "system", "content": "x"}]})[0] == "messages"


def test_named_tool_choice_must_be_a_tool():
    with pytest.raises(ValidationError, match="not in `tools`"):
        MessagesRequest.model_validate({**BASE, "tool_choice": {"type": "tool", "name": "x"}})
