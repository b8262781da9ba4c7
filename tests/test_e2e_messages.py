"""Anthropic's Messages API through the real stack (router + vLLM on SmolLM2), with the
`anthropic` SDK changing only `base_url`."""

from __future__ import annotations

import anthropic
import pytest
from anthropic.types import Message, MessageTokensCount

from tests.conftest import CHAT_MODEL

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
