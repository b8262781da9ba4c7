"""The router on its own (no worker running): CORS, a down worker, keys, usage, bodies.

The stream relay is tested over streams recorded from the real worker: test_e2e_vllm_contract.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.config import ApiKey, Limits, load_config
from serving.router.app import create_app
from serving.router.context import Meter
from serving.router.keys import (
    KeyStore,
    Principal,
    ensure_generated_key,
    hash_key,
    keys_from_env,
    principals,
)
from serving.router.usage import normalize_response_usage, normalize_usage

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-unit-test"


def router(tmp_path: Path, overlay: str = "", limits: Limits | None = None) -> TestClient:
    others = [name for name in load_config([ROOT / "configs" / "cpu.yaml"]).workers
              if name != "chat"]
    (tmp_path / "chat-only.yaml").write_text(
        "workers: {" + ", ".join(f"{n}: {{enabled: false}}" for n in others) + "}\n")
    (tmp_path / "state.yaml").write_text(f"state_dir: {tmp_path / 'state'}\n")
    files = [ROOT / "configs" / "cpu.yaml", tmp_path / "chat-only.yaml", tmp_path / "state.yaml"]
    if overlay:
        (tmp_path / "overlay.yaml").write_text(overlay)
        files.append(tmp_path / "overlay.yaml")
    config = load_config(files)
    # Port 9 (discard) on loopback: nothing listens, as when a worker has crashed.
    app = create_app(config, {"chat": "http://127.0.0.1:9"},
                     principals(keys_from_env({"SERVING_API_KEYS": KEY}), limits or Limits()))
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def test_cors_allow_list(tmp_path: Path):
    client = router(tmp_path, "router: {cors_origins: ['https://app.example']}")
    ok = client.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/v1/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    get = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert get.headers["access-control-allow-origin"] == "https://app.example"


def test_down_worker_is_503_with_retry_after(tmp_path: Path):
    client = router(tmp_path)
    r = client.post("/v1/chat/completions",
                    json={"model": "smollm2-135m-instruct",
                          "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503
    assert r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "worker_unavailable"
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["workers"] == {"chat": "down"}


def test_key_store_and_generated_key(tmp_path: Path):
    store = KeyStore(principals(
        keys_from_env({"SERVING_API_KEYS": "sk-a, sk-b", "SERVING_ADMIN_KEYS": "sk-op"}),
        Limits(requests_per_minute=5)))
    assert store.verify("sk-a").name == "env-1" and store.verify("sk-b").name == "env-2"
    assert store.verify("sk-a").limits.requests_per_minute == 5
    assert store.verify("sk-op").admin and not store.verify("sk-a").admin
    assert store.verify("sk-c") is None and store.verify("") is None
    path = tmp_path / "sub" / "api_key"
    key, created = ensure_generated_key(path)
    assert created and path.stat().st_mode & 0o777 == 0o600
    again, created_again = ensure_generated_key(path)
    assert not created_again and again.sha256 == key.sha256
    assert key.sha256 == hash_key(path.read_text().strip())


def test_usage_mapping():
    vllm = {"prompt_tokens": 1816, "completion_tokens": 5, "total_tokens": 1821,
            "prompt_tokens_details": {"cached_tokens": 1792, "created_cache_tokens": 16}}
    u = normalize_usage(vllm)
    assert u["cache_read_input_tokens"] == 1792 and u["cache_creation_input_tokens"] == 16
    assert u["prompt_tokens_details"] == {"cached_tokens": 1792, "cache_write_tokens": 16}
    assert u["total_tokens"] == 1821
    off = normalize_usage(vllm, caching=False)
    assert off["cache_read_input_tokens"] == off["cache_creation_input_tokens"] == 0
    empty = normalize_usage({"prompt_tokens": 3, "completion_tokens": None})
    assert empty["completion_tokens"] == 0 and empty["total_tokens"] == 3


def upstream(pieces: list[bytes]) -> httpx.Response:
    """A worker's streamed answer, arriving in `pieces`."""
    async def body():
        for piece in pieces:
            yield piece

    return httpx.Response(200, content=body())


async def drain(stream, stop_after: int | None) -> bytes:
    """What a client reads of a relay, leaving after `stop_after` chunks if given."""
    out = []
    async for chunk in stream:
        out.append(chunk)
        if stop_after is not None and len(out) == stop_after:
            await stream.aclose()  # the client went away
            break
    return b"".join(out)


def test_body_limit_is_a_413_envelope(tmp_path: Path):
    client = router(tmp_path, "router: {max_body_bytes: 2048}")
    body = {"model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "x" * 4096}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunks(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Unauthenticated requests are turned away before their body is even looked at.
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": ""})
    assert r.status_code == 401


def test_json_bodies_must_be_valid_unicode():
    from serving.errors import OpenAIError
    from serving.router.json_body import loads

    assert loads(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001F600"}  # a pair is one character
    with pytest.raises(OpenAIError) as lone:
        loads(b'{"messages": [{"content": "x"}, {"content": "\\ud800"}]}')
    assert lone.value.status == 400 and lone.value.param == "messages[1].content"
    with pytest.raises(OpenAIError):
        loads(b'{"a": "\xed\xa0\x80"}')  # the raw bytes of one, which json.loads also takes


def test_a_rate_limit_store_that_is_down_does_not_fail_requests(tmp_path: Path):
    """Nothing listens on port 1: the limits cannot be checked, the request goes on (to a
    worker that is down here too, hence its 503) instead of failing with a 500."""
    client = router(tmp_path, "router: {rate_limit_store: 'redis://127.0.0.1:1/0',"
                              " default_limits: {requests_per_minute: 5}}")
    r = client.post("/v1/chat/completions",
                    json={"model": "smollm2-135m-instruct", "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unavailable"
    assert "x-ratelimit-limit-requests" not in r.headers


def test_one_validation_error_mapper_for_json_bodies_and_forms():
    """A JSON body's errors and a multipart form's read the same: the field in `param`, the
    message without pydantic's "Value error, " prefix."""
    from pydantic import ValidationError
    from starlette.datastructures import FormData

    from serving.errors import OpenAIError, validation_error
    from serving.protocol.audio import transcription_fields
    from serving.protocol.chat import ChatCompletionRequest

    with pytest.raises(ValidationError) as chat:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}],
             "tool_choice": "required"})
    error = validation_error([{**e, "loc": ("body", *e["loc"])} for e in chat.value.errors()])
    assert error.status == 400 and error.code == "invalid_value"
    assert error.message == "tool_choice 'required' needs 'tools'"

    def form(**fields) -> OpenAIError:
        with pytest.raises(OpenAIError) as e:
            transcription_fields(FormData([("model", "stt"), *fields.items()]))
        return e.value

    assert form(temperature="2").param == "temperature"
    assert form(**{"timestamp_granularities[]": "hour"}).param == "timestamp_granularities[]"
    unknown = form(colour="red")
    assert (unknown.param, unknown.code) == ("colour", "unknown_parameter")


def test_request_context_ids_and_admin_dependency(tmp_path: Path):
    from serving.router.context import RequestContext

    ours = RequestContext("req_abc", client_sent_id=False, meter=Meter())
    assert ours.worker_request_id() == "req_abc"
    theirs = RequestContext("trace-1", client_sent_id=True, meter=Meter())
    first, second = theirs.worker_request_id(), theirs.worker_request_id()
    assert first.startswith("trace-1-") and second.startswith("trace-1-") and first != second

    client = router(tmp_path)
    r = client.get("/v1/usage", headers={"x-request-id": "trace-2"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
    assert r.headers["x-request-id"] == "trace-2"
    assert client.get("/metrics").status_code == 403


def test_each_key_has_its_own_prompt_cache_unless_keys_share_a_group():
    keys = principals([
        ApiKey(name="a", sha256=hash_key("sk-a")),
        ApiKey(name="b", sha256=hash_key("sk-b")),
        ApiKey(name="team-1", sha256=hash_key("sk-t1"), cache_group="team"),
        ApiKey(name="team-2", sha256=hash_key("sk-t2"), cache_group="team"),
    ], Limits())
    a, b, team1, team2 = (key.cache_salt for key in keys)
    assert len({a, b, team1}) == 3 and team1 == team2
    for key in keys:  # neither the key nor its hash travels to the worker
        assert key.cache_salt not in (key.sha256, hash_key(key.sha256))
    assert all(len(salt) <= 128 and "/" not in salt and "@" not in salt for salt in (a, team1))


def test_clients_cannot_choose_the_cache_salt(tmp_path: Path):
    client = router(tmp_path)
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user",
                                                               "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        r = client.post(path, json={"model": "smollm2-135m-instruct", "cache_salt": "x", **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "cache_salt"

# --- the Responses API ----------------------------------------------------------------------

def test_response_usage_mapping():
    vllm = {"input_tokens": 271, "output_tokens": 5, "total_tokens": 276,
            "input_tokens_details": {"cached_tokens": 128, "cache_write_tokens": 128,
                                     "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
            "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                      "output_tokens_per_turn": []}}
    u = normalize_response_usage(vllm)
    assert u == {"input_tokens": 271, "input_tokens_details": {"cached_tokens": 128,
                                                               "cache_write_tokens": 128},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 276, "cache_read_input_tokens": 128,
                 "cache_creation_input_tokens": 128}
    off = normalize_response_usage(vllm, caching=False)
    assert off["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert normalize_response_usage(None)["total_tokens"] == 0


def test_responses_requests_are_checked_before_the_worker(tmp_path: Path):
    """What passes reaches the (down) worker: a 503; what does not is a 400 naming the field."""
    client = router(tmp_path)
    model = "smollm2-135m-instruct"
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    ok = [
        {"input": "hi", "store": False, "include": [], "instructions": "Be brief."},
        {"input": [{"role": "user", "content": "hi"},
                   {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "c1", "output": "42"},
                   {"type": "message", "role": "assistant", "content": [
                       {"type": "output_text", "text": "42", "annotations": []}]}],
         "tools": [tool], "tool_choice": {"type": "function", "name": "f"}},
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                            "schema": {"type": "object"}}}},
    ]
    for body in ok:
        r = client.post("/v1/responses", json={"model": model, **body})
        assert r.status_code == 503, r.text
    bad = [
        ({"input": "hi", "store": True}, "store", "invalid_value"),
        ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id",
         "invalid_value"),
        ({"input": "hi", "colour": "red"}, "colour", "unknown_parameter"),
        ({"input": "hi", "include": ["message.output_text.logprobs"]}, "include",
         "invalid_value"),
        ({"input": "hi", "tool_choice": "required"}, None, "invalid_value"),
        ({"input": "hi", "temperature": 3}, "temperature", "invalid_value"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]", "invalid_value"),
        ({"input": [{"type": [], "role": "user", "content": "x"}]}, "input[0]",
         "invalid_value"),  # found by the fuzz test: a 500 before
        ({"input": [{"role": "user", "content": [{"type": {}, "text": "x"}]}]},
         "input[0].content[0]", "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "x",
                                                   "extra": 1}]}]},
         "input[0].content[0].extra", "unknown_parameter"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]},
         "input[0].content[0]", "invalid_image"),  # not an image: a 400, not the worker's 500
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://169.254.169.254/x.png"}]}]},
         "input[0].content[0]", "invalid_image_url"),  # not fetched (link-local)
    ]
    for body, param, code in bad:
        r = client.post("/v1/responses", json={"model": model, **body})
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == (param, code), (body, error)
    assert "does not store responses" in client.post(
        "/v1/responses", json={"model": model, "input": "hi", "store": True}
    ).json()["error"]["message"]
    for method in ("GET", "DELETE"):
        r = client.request(method, "/v1/responses/resp_1")
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_endpoint"


def test_image_input_needs_a_vision_model(tmp_path: Path):
    """A chat model without `vision` refuses images before anything is fetched or decoded."""
    catalog = tmp_path / "models"
    catalog.mkdir()
    for yaml in (ROOT / "models").glob("*.yaml"):
        text = yaml.read_text()
        if yaml.stem == "smollm2-135m-instruct":
            text = text.replace("vision: tiny-idefics3", "").replace("vision, ", "")
        (catalog / yaml.name).write_text(text)
    client = router(tmp_path, f"catalog_dir: {catalog}\n")
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}
    r = client.post("/v1/chat/completions", json={
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("messages[1].content", "unsupported_parameter")
    catalog_entry = next(m for m in client.get("/v1/catalog").json()["data"]
                         if m["id"] == "smollm2-135m-instruct")
    assert "vision" not in catalog_entry["capabilities"]


def test_images_are_checked_by_the_router_before_the_worker(tmp_path: Path):
    """On the vision model: bad images are 400s naming the part; good ones reach the (down)
    worker, a 503. The catalog lists `vision`."""
    client = router(tmp_path, "router: {images: {max_images_per_request: 2}}\n")
    png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4"
           "z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==")

    def ask(*urls: str) -> httpx.Response:
        parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        return client.post("/v1/chat/completions", json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, *parts]}]})

    assert ask(png, png).status_code == 503
    for urls, param, code in [
        ((png, png, png), "messages[0].content[3]", "too_many_images"),
        ((png, png[:60]), "messages[0].content[2]", "invalid_image"),
        (("http://10.1.2.3/cat.png",), "messages[0].content[1]", "invalid_image_url"),
        (("file:///etc/passwd",), "messages[0].content[1]", "invalid_image_url"),
    ]:
        r = ask(*urls)
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
    catalog_entry = next(m for m in client.get("/v1/catalog").json()["data"]
                         if m["id"] == "smollm2-135m-instruct")
    assert "vision" in catalog_entry["capabilities"]
    assert "/v1/messages" in catalog_entry["endpoints"]


def test_an_image_reserves_its_tokens_not_its_bytes(tmp_path: Path):
    """A tokens-per-minute limit reserves an image's likely tokens, not a quarter of its
    base64: a picture of 40 kB passes a limit of 3000 tokens that 16 kB of text does not."""
    import base64
    import io
    import random

    from PIL import Image

    client = router(tmp_path, limits=Limits(tokens_per_minute=3000))
    noise = Image.frombytes("RGB", (120, 120), random.Random(0).randbytes(120 * 120 * 3))
    png = io.BytesIO()
    noise.save(png, "PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    assert len(url) > 40_000

    def ask(content) -> httpx.Response:
        return client.post("/v1/chat/completions", json={
            "model": "smollm2-135m-instruct", "max_tokens": 2,
            "messages": [{"role": "user", "content": content}]})

    assert ask("word " * 3200).status_code == 429
    image = [{"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": url}}]
    assert ask(image).status_code == 503  # admitted; the worker is down


def test_a_key_over_its_limit_makes_the_router_fetch_nothing(tmp_path: Path):
    """Admission comes before the work it should prevent: the image URL of a request that
    the key's limits refuse is never fetched."""
    from tests.support.images import encoded, serve_images

    seen: list[str] = []
    with serve_images({"/red.png": encoded("PNG")}, seen=seen) as url:
        client = router(tmp_path, "router: {images: {allow_networks: ['127.0.0.1/32']}}",
                        limits=Limits(requests_per_minute=1))

        def ask() -> httpx.Response:
            return client.post("/v1/chat/completions", json={
                "model": "smollm2-135m-instruct", "max_tokens": 2,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": f"{url}/red.png"}}]}]})

        assert ask().status_code == 503  # admitted and fetched; the worker is down
        assert seen == ["/red.png"]
        assert ask().status_code == 429
        assert seen == ["/red.png"]  # refused before any fetch


# --- vLLM's sampling extensions ---------------------------------------------------------------

VLLM_EXTENSIONS = {"ignore_eos": True, "min_tokens": 4, "top_k": 20, "min_p": 0.05,
                   "repetition_penalty": 1.0, "stop_token_ids": [2], "skip_special_tokens": True,
                   "spaces_between_special_tokens": True, "include_stop_str_in_output": False}


def test_vllms_sampling_extensions_reach_vllm_and_server_fields_are_refused(tmp_path: Path):
    """What `vllm bench serve`, guidellm and aiperf send passes validation on chat and
    completions and is in the body vLLM gets, as sent; what a tenant must not set is a 400
    naming the field."""
    from types import SimpleNamespace

    from serving.protocol.chat import ChatCompletionRequest, CompletionRequest
    from serving.router.text import chat, completions

    client = router(tmp_path)
    served = SimpleNamespace(entry=SimpleNamespace(id="smollm2-135m-instruct",
                                                   capabilities={"json_schema"}))
    key = Principal(name="k", sha256="0" * 64, limits=Limits())
    for path, body, request, module in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]},
             ChatCompletionRequest, chat),
            ("/v1/completions", {"prompt": "hi", "logprobs": None}, CompletionRequest,
             completions)):
        sent = {"model": "smollm2-135m-instruct", **body, **VLLM_EXTENSIONS, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        r = client.post(path, json=sent)
        assert r.status_code == 503, r.text  # valid; the worker is not running
        parsed = request.model_validate(sent)
        assert parsed.continuous_usage
        upstream = module.vllm_request(parsed, served, key)
        assert {k: upstream[k] for k in VLLM_EXTENSIONS} == VLLM_EXTENSIONS
        assert upstream["cache_salt"] == key.cache_salt
        for field, value in (("priority", 1), ("cache_salt", "x"),
                             ("kv_transfer_params", {}), ("vllm_xargs", {"a": 1}),
                             ("top_k", -2), ("min_tokens", -1)):
            r = client.post(path, json={"model": "smollm2-135m-instruct", **body, field: value})
            assert r.status_code == 400, (field, r.text)
            assert r.json()["error"]["param"] == field


def test_anthropic_clients_send_x_api_key_and_read_anthropic_errors(tmp_path: Path):
    client = router(tmp_path, "router: {max_body_bytes: 2048}")
    assert client.get("/v1/models", headers={"Authorization": "", "x-api-key": KEY}) \
        .status_code == 200
    wrong = client.post("/v1/messages", json={}, headers={"Authorization": "", "x-api-key": "no"})
    assert wrong.status_code == 401
    assert wrong.json() == {"type": "error", "error": {
        "type": "authentication_error", "message": "Incorrect API key provided."}}
    missing = client.post("/v1/messages", json={}, headers={"Authorization": ""})
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    basic = client.post("/v1/messages", json={}, headers={"Authorization": "Basic eA=="})
    assert "x-api-key" in basic.json()["error"]["message"]
    big = client.post("/v1/messages", json={"x": "y" * 4096})
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
    nowhere = client.post("/v1/messages/nowhere", json={})
    assert nowhere.status_code == 404 and nowhere.json()["type"] == "error"
    assert nowhere.json()["error"]["type"] == "not_found_error"
    # OpenAI's paths keep OpenAI's envelope.
    chat = client.post("/v1/chat/completions", json={}, headers={"Authorization": ""})
    assert chat.json()["error"]["code"] == "invalid_api_key" and "type" not in chat.json()
    assert "x-api-key" not in chat.json()["error"]["message"]


@pytest.mark.parametrize("status, kind", [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (503, "overloaded_error"), (415, "invalid_request_error"),
])
def test_anthropic_error_types_by_status(status: int, kind: str):
    from serving.errors import OpenAIError, anthropic_body
    body = anthropic_body(OpenAIError(status, "bad", param="max_tokens"))
    assert body == {"type": "error", "error": {"type": kind, "message": "max_tokens: bad"}}


def test_messages_are_checked_and_answered_in_anthropic_shape(tmp_path: Path):
    client = router(tmp_path)
    base = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
    missing = client.post("/v1/messages", json=base)
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]
    thinking = client.post("/v1/messages", json={**base, "max_tokens": 8,
                                                  "thinking": {"type": "enabled"}})
    assert thinking.status_code == 400 and "thinking" in thinking.json()["error"]["message"]
    unknown = client.post("/v1/messages", json={**base, "max_tokens": 8, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    down = client.post("/v1/messages", json={**base, "max_tokens": 8})  # nothing on port 9
    assert down.status_code == 503 and down.json()["error"]["type"] == "overloaded_error"
    assert down.headers["retry-after"].isdigit()
    count = client.post("/v1/messages/count_tokens", json=base)
    assert count.status_code == 503 and count.json()["type"] == "error"


def test_messages_images_go_through_chats_guard(tmp_path: Path):
    """Image blocks (base64 and url, a tool result's too) are decoded and fetched as chat's
    are: a good one reaches the (down) worker, a corrupt one or a private URL is Anthropic's
    400 naming the block."""
    from tests.support.images import encoded, serve_images

    png = base64.b64encode(encoded("PNG")).decode()
    seen: list[str] = []
    with serve_images({"/red.png": encoded("PNG")}, seen=seen) as url:
        client = router(tmp_path, "router: {images: {allow_networks: ['127.0.0.1/32']}}")

        def ask(source: dict, path: str = "/v1/messages", in_tool_result: bool = False):
            block = {"type": "image", "source": source}
            if in_tool_result:
                block = {"type": "tool_result", "tool_use_id": "t1", "content": [block]}
            body = {"model": "smollm2-135m-instruct",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "?"},
                                                              block]}]}
            return client.post(path, json=body if "count" in path else {**body,
                                                                          "max_tokens": 2})

        good = {"type": "base64", "media_type": "image/png", "data": png}
        assert ask(good).status_code == 503  # decoded, admitted; the worker is down
        assert ask({"type": "url", "url": f"{url}/red.png"}).status_code == 503
        assert seen == ["/red.png"]
        for source, where, tool in [
            ({**good, "data": png[:40]}, "messages[0].content[1]", False),
            ({**good, "data": "not base64!"}, "messages[0].content[1]", False),
            ({"type": "url", "url": "http://10.1.2.3/cat.png"}, "messages[0].content[1]",
             False),
            ({"type": "url", "url": "file:///etc/passwd"}, "messages[0].content[1]", False),
            ({**good, "data": png[:40]}, "messages[0].content[1].content[0]", True),
        ]:
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                r = ask(source, path, tool)
                assert r.status_code == 400, r.text
                error = r.json()["error"]
                assert error["type"] == "invalid_request_error"
                assert error["message"].startswith(where + ":"), error
        assert seen == ["/red.png"]  # the private address was never fetched


def test_messages_over_the_limit_answer_anthropics_429(tmp_path: Path):
    client = router(tmp_path, limits=Limits(requests_per_minute=1))
    body = {"model": "smollm2-135m-instruct", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]}
    first = client.post("/v1/messages", json=body)
    assert first.status_code == 503  # admitted; the worker is down
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
    r = client.post("/v1/messages", json=body)
    assert r.status_code == 429
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert r.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert r.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert r.headers["x-ratelimit-limit-requests"] == "1"
    chat = client.post("/v1/chat/completions", json=body)
    assert chat.status_code == 429 and "anthropic-ratelimit-requests-limit" not in chat.headers
