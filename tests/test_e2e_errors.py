"""Every error a client can see is OpenAI's envelope with the right status and `param`."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import CHAT_MODEL, validate_openai

pytestmark = pytest.mark.e2e

MSGS = [{"role": "user", "content": "hi"}]


def assert_envelope(r: httpx.Response, status: int, param: str | None = None,
                    code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    validate_openai(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"user": 12}, "user"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, None),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tool_choice": "required"}, None),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
         "tools[0].function.name"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]},
         "messages[0].content[0]"),
        ({"stream": "yes"}, "stream"),
        ({"max_tokens": "12"}, "max_tokens"),
    ],
)
def test_invalid_chat_fields_name_the_param(http, extra, param):
    r = http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MSGS, **extra})
    assert_envelope(r, 400, param)


def test_unknown_field_is_named(http):
    r = http.post("/v1/chat/completions",
                  json={"model": CHAT_MODEL, "messages": MSGS, "frobnicate": 1})
    error = assert_envelope(r, 400, "frobnicate", "unknown_parameter")
    assert "frobnicate" in error["message"]


def test_missing_required_fields(http):
    assert_envelope(http.post("/v1/chat/completions", json={"messages": MSGS}), 400, "model")
    assert_envelope(http.post("/v1/chat/completions", json={"model": CHAT_MODEL}), 400,
                    "messages")
    assert_envelope(http.post("/v1/completions", json={"model": CHAT_MODEL}), 400, "prompt")


def test_malformed_json_and_wrong_body_types(http):
    for content in (b"{not json", b"", b"[1, 2]", b'"text"'):
        r = http.post("/v1/chat/completions", content=content,
                      headers={"content-type": "application/json"})
        assert_envelope(r, 400)


def test_unknown_model_is_404(client, http):
    r = http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSGS})
    assert_envelope(r, 404, "model", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    assert_envelope(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}),
                    404, "model", "model_not_found")


def test_completions_unsupported_fields(http):
    for extra, param in [({"logprobs": 2}, "logprobs"), ({"suffix": "x"}, "suffix"),
                         ({"best_of": 3}, "best_of"), ({"echo": "yes"}, "echo")]:
        r = http.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "x", **extra})
        assert_envelope(r, 400, param)


def test_worker_rejections_are_enveloped(http):
    # vLLM itself rejects this (longer than the context); the router re-wraps its error.
    r = http.post("/v1/chat/completions",
                  json={"model": CHAT_MODEL, "messages": MSGS, "max_tokens": 10**6})
    error = assert_envelope(r, 400, "max_tokens")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"},
     {"Authorization": "Bearer"}, {"Authorization": ""}],
)
def test_auth_failures(stack, headers):
    r = httpx.post(stack.v1 + "/chat/completions", headers=headers,
                   json={"model": CHAT_MODEL, "messages": MSGS})
    assert_envelope(r, 401, None, "invalid_api_key")
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert_envelope(httpx.get(stack.v1 + "/models", headers=headers), 401, None,
                    "invalid_api_key")


def test_sdk_with_wrong_key_gets_authentication_error(stack):
    from openai import OpenAI

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=stack.v1, api_key="sk-nope", max_retries=0).models.list()


def test_keys_never_appear_in_logs(stack, http):
    http.get("/v1/models")
    assert stack.key not in stack.log_text()


def test_health_and_ready_need_no_key(stack):
    assert httpx.get(stack.base_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(stack.base_url + "/ready").json()
    assert ready["status"] == "ready"
    assert ready["workers"] == {"chat": "up", "images": "up", "edits": "up", "videos": "up",
                                "speech": "up", "transcription": "up"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/embeddings"), ("POST", "/v1/audio/translations"),
     ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/fine_tuning/jobs"),
     ("POST", "/v1/fine-tuning"), ("POST", "/v1/assistants"), ("GET", "/v1/assistants/asst_1"),
     ("POST", "/v1/threads"), ("POST", "/v1/threads/t1/runs"), ("POST", "/v1/batches"),
     ("GET", "/v1/files"), ("POST", "/v1/files"), ("POST", "/v1/images/variations")],
)
def test_unsupported_endpoints_answer_with_an_envelope(http, method, path):
    r = http.request(method, path, json={"model": CHAT_MODEL, "input": "x"})
    error = assert_envelope(r, 400, None, "unsupported_endpoint")
    assert error["type"] == "invalid_request_error"


def test_embeddings_via_sdk_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=CHAT_MODEL, input="hello")


def test_unknown_route_and_wrong_method(http):
    assert_envelope(http.get("/v1/nothing-here"), 404)
    assert_envelope(http.delete("/v1/chat/completions"), 405)
    assert_envelope(http.get("/v1/chat/completions"), 405)


def test_no_cors_headers_by_default(http):
    r = http.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = http.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    assert_envelope(pre, 405)  # no preflight answer: OPTIONS is just a method the route lacks
