"""Keys with limits, model allow-lists, backpressure and a graceful stop, on a stack of its own.

The stack keeps its rate-limit counters in a real redis-server, as router replicas would; one
that requires a password, which the routers get as REDIS_PASSWORD (as the Helm chart gives it
from a Secret), not in the configured URL.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from serving.launcher.supervisor import free_port
from serving.router.keys import hash_key
from tests.conftest import CHAT_MODEL, validate_openai
from tests.support import local_servers
from tests.support.harness import BackgroundStack, start_background_router, start_background_stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

RPM_KEY, TPM_KEY, NARROW_KEY = "sk-rpm-0123456789", "sk-tpm-0123456789", "sk-narrow-0123456789"
RESPONSES_TPM_KEY = "sk-tpm-responses-0123456789"
SHARED_KEY = "sk-shared-rpm-0123456789"
METRICS_RPM_KEY = "sk-metrics-rpm-0123456789"
MESSAGES_RPM_KEY = "sk-messages-rpm-0123456789"
METRICS_PORT = free_port()
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(ms|s))$")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, redis_with_password: local_servers.Redis
            ) -> Iterator[BackgroundStack]:
    tmp = tmp_path_factory.mktemp("limited")
    overlay = tmp / "limits.yaml"
    overlay.write_text(f"""
router:
  metrics_port: {METRICS_PORT}
  rate_limit_store: {redis_with_password.url}
  default_limits: {{requests_per_minute: 1000}}
  api_keys:
    - {{name: rpm, env: TEST_RPM_KEY, limits: {{requests_per_minute: 3}}}}
    - {{name: tpm, sha256: {hash_key(TPM_KEY)}, limits: {{tokens_per_minute: 400}}}}
    - {{name: tpm-responses, sha256: {hash_key(RESPONSES_TPM_KEY)},
        limits: {{tokens_per_minute: 400}}}}
    - {{name: narrow, sha256: {hash_key(NARROW_KEY)}, models: [{CHAT_MODEL}]}}
    - {{name: shared, sha256: {hash_key(SHARED_KEY)}, limits: {{requests_per_minute: 2}}}}
    - {{name: metrics-rpm, sha256: {hash_key(METRICS_RPM_KEY)},
        limits: {{requests_per_minute: 1}}}}
    - {{name: messages-rpm, sha256: {hash_key(MESSAGES_RPM_KEY)},
        limits: {{requests_per_minute: 1}}}}
workers:
  chat: {{max_in_flight: 1}}
  edits: {{enabled: false}}
  videos: {{enabled: false}}
  speech: {{enabled: false}}
  transcription: {{enabled: false}}
""")
    root = Path(__file__).resolve().parent.parent
    stack = start_background_stack([root / "configs" / "cpu.yaml", overlay], tmp,
                                   env=stack_env(redis_with_password))
    yield stack
    stack.stop()


def stack_env(redis_server: local_servers.Redis) -> dict[str, str]:
    assert redis_server.password
    return {"TEST_RPM_KEY": RPM_KEY, "REDIS_PASSWORD": redis_server.password}


def as_key(stack: BackgroundStack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.v1, timeout=120,
                        headers={"Authorization": f"Bearer {key}"})


def ask(max_tokens: int = 4, **extra) -> dict:
    """Greedy, so what a request uses (and so what the token bucket is left with) is the same
    every run: "Say hi." takes about 20 tokens to answer."""
    return {"model": CHAT_MODEL, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}], **extra}


def long_story(max_tokens: int) -> dict:
    """A request that runs to max_tokens (greedy, this model does not stop early here)."""
    return ask(max_tokens=max_tokens, stream=True, temperature=0, messages=[
        {"role": "user", "content": "Write a long story about a dragon and a knight, at "
                                    "least 500 words."}])


def test_requests_per_minute(limited: BackgroundStack, redis_with_password: local_servers.Redis):
    http = as_key(limited, RPM_KEY)  # a key given to the config by environment variable
    for left in (2, 1, 0):
        r = http.post("/chat/completions", json=ask())
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == str(left)
        assert DURATION.match(r.headers["x-ratelimit-reset-requests"])
    r = http.post("/chat/completions", json=ask())
    assert r.status_code == 429
    validate_openai(r.json(), "ErrorResponse")
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    # The SDK sees OpenAI's RateLimitError.
    sdk = openai.OpenAI(base_url=limited.v1, api_key=RPM_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(**ask())
    # The counters live in Redis, where other router replicas would see them.
    assert redis.Redis.from_url(redis_with_password.url,
                                password=redis_with_password.password).keys("*rpm*")


def test_messages_over_the_limit_is_the_sdks_rate_limit_error(limited: BackgroundStack):
    """Anthropic's SDK (x-api-key) gets its RateLimitError, with retry-after and Anthropic's
    rate-limit headers; the same bucket as the key's OpenAI requests."""
    import anthropic

    sdk = anthropic.Anthropic(base_url=limited.base_url, api_key=MESSAGES_RPM_KEY,
                              max_retries=0, timeout=120)
    ask = {"model": CHAT_MODEL, "max_tokens": 2,
           "messages": [{"role": "user", "content": "Say hi."}]}
    ok = sdk.messages.with_raw_response.create(**ask)
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "1"
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(anthropic.RateLimitError) as e:
        sdk.messages.create(**ask)
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_two_routers_share_keys_and_limits(limited: BackgroundStack, tmp_path: Path,
                                           redis_with_password: local_servers.Redis):
    """A second router (`serving router` beside the stack) knows the same keys and counts
    against the same buckets: two requests, one through each, spend the key's minute (one
    request back every 30 s: a slow machine may see one refill, never two)."""
    root = Path(__file__).resolve().parent.parent
    own_port = tmp_path / "b.yaml"
    own_port.write_text("router: {metrics_port: null}\n")  # the stack has that one
    router_b = start_background_router(
        [root / "configs" / "cpu.yaml", limited.log.parent / "limits.yaml", own_port],
        tmp_path / "b", stack=limited, env=stack_env(redis_with_password))
    try:
        a = as_key(limited, SHARED_KEY)
        b = httpx.Client(base_url=router_b.v1, timeout=120,
                         headers={"Authorization": f"Bearer {SHARED_KEY}"})
        for http, left in ((a, 1), (b, 0)):
            r = http.post("/chat/completions", json=ask())
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-remaining-requests"] == str(left)
        statuses = [http.post("/chat/completions", json=ask()) for http in (b, a)]
        assert 429 in [r.status_code for r in statuses], [r.text for r in statuses]
        for r in statuses:
            if r.status_code == 429:
                assert r.headers["retry-after"].isdigit()
                assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert b.get("/models", headers={"Authorization": "Bearer sk-unknown"}
                     ).status_code == 401
    finally:
        assert router_b.stop() == 0


def test_tokens_are_reserved_then_settled(limited: BackgroundStack):
    http = as_key(limited, TPM_KEY)
    first = http.post("/chat/completions", json=ask(max_tokens=300))
    assert first.status_code == 200, first.text
    # Reserved: the prompt's estimate plus all 300 tokens it may generate...
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100
    assert first.headers["x-ratelimit-limit-tokens"] == "400"
    # ...then settled against what it used, so the next big request fits again.
    second = http.post("/chat/completions", json=ask(max_tokens=300))
    assert second.status_code == 200, second.text
    too_big = http.post("/chat/completions", json=ask(max_tokens=1000))
    assert too_big.status_code == 429
    assert too_big.json()["error"]["type"] == "tokens"
    assert "too large" in too_big.json()["error"]["message"]


def test_responses_tokens_are_reserved_then_settled(limited: BackgroundStack):
    """The Responses API takes from the same token budget: `max_output_tokens` reserved."""
    http = as_key(limited, RESPONSES_TPM_KEY)
    body = {"model": CHAT_MODEL, "input": "Say hi.", "max_output_tokens": 250,
            "temperature": 0}
    first = http.post("/responses", json=body)
    assert first.status_code == 200, first.text
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 150
    second = http.post("/responses", json=body)
    assert second.status_code == 200, second.text
    too_big = http.post("/responses", json={**body, "max_output_tokens": 1000})
    assert too_big.status_code == 429
    assert too_big.json()["error"]["type"] == "tokens"


def test_a_key_sees_and_uses_only_its_models(limited: BackgroundStack):
    http = as_key(limited, NARROW_KEY)
    assert [m["id"] for m in http.get("/models").json()["data"]] == [CHAT_MODEL]
    assert [m["id"] for m in http.get("/catalog").json()["data"]] == [CHAT_MODEL]
    r = http.post("/images/generations", json={"model": "flux-tiny", "prompt": "a cat"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    sdk = openai.OpenAI(base_url=limited.v1, api_key=NARROW_KEY, max_retries=0)
    assert [m.id for m in sdk.models.list()] == [CHAT_MODEL]
    with pytest.raises(openai.NotFoundError):
        sdk.images.generate(model="flux-tiny", prompt="a cat")
    assert http.post("/chat/completions", json=ask()).status_code == 200
    # Another key, with every model, may draw.
    r = as_key(limited, limited.key).post("/images/generations",
                                          json={"model": "flux-tiny", "prompt": "a cat"})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def refused_while_full(http: httpx.Client) -> httpx.Response:
    """max_in_flight: 1 on the chat worker: a request sent while a long stream holds the
    model's one slot, answered at once; returns once the slot is free again."""
    with http.stream("POST", "/chat/completions", json=long_story(300)) as long:
        assert long.status_code == 200
        lines = long.iter_lines()  # held: a dropped iterator would close the connection
        next(lines)  # it is generating
        started = time.monotonic()
        refused = http.post("/chat/completions", json=ask())
        assert time.monotonic() - started < 10
    # The slot is free again once that stream is gone.
    wait_until(lambda: http.post("/chat/completions", json=ask()).status_code == 200,
               "the model's slot to be free again", timeout_s=30, every_s=0.2)
    return refused


def test_a_full_model_answers_503_at_once(limited: BackgroundStack):
    r = refused_while_full(as_key(limited, limited.key))
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "model_overloaded"


def test_metrics_without_a_key_on_their_own_port(limited: BackgroundStack):
    """The rejections this test causes are counted there (whatever ran before it)."""
    assert refused_while_full(as_key(limited, limited.key)).status_code == 503
    http = as_key(limited, METRICS_RPM_KEY)
    assert [http.post("/chat/completions", json=ask()).status_code for _ in range(2)] == [
        200, 429]  # its one request a minute
    r = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
    assert r.status_code == 200
    assert 'serving_rate_limit_rejections_total{key="metrics-rpm",kind="requests"}' in r.text
    assert 'serving_overload_rejections_total{model="smollm2-135m-instruct"}' in r.text
    # Only /metrics there; on the API port it still takes an admin key.
    assert httpx.get(f"http://127.0.0.1:{METRICS_PORT}/v1/models").status_code == 404
    assert httpx.get(limited.base_url + "/metrics").status_code == 401


def test_no_key_is_in_the_log(limited: BackgroundStack):
    for key in (RPM_KEY, TPM_KEY, NARROW_KEY, limited.key, limited.admin_key):
        as_key(limited, key).get("/models")
    log = limited.log_text()
    for key in (RPM_KEY, TPM_KEY, NARROW_KEY, limited.key, limited.admin_key):
        assert key not in log


def test_sigterm_finishes_requests_in_flight(tmp_path: Path):
    """It stops its stack, so it has one of its own: a chat worker only."""
    overlay = tmp_path / "chat-only.yaml"
    overlay.write_text("workers: {images: {enabled: false}, edits: {enabled: false}, "
                       "videos: {enabled: false}, speech: {enabled: false}, "
                       "transcription: {enabled: false}}\n")
    root = Path(__file__).resolve().parent.parent
    stack = start_background_stack([root / "configs" / "cpu.yaml", overlay], tmp_path)
    try:
        http = as_key(stack, stack.key)
        events: list[str] = []

        def stream() -> None:
            with http.stream("POST", "/chat/completions", json=long_story(120)) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)

        reader = threading.Thread(target=stream)
        reader.start()
        wait_until(lambda: events, "the stream's first event", every_s=0.01)
        stack.process.send_signal(signal.SIGTERM)
        reader.join(120)
        assert events[-1] == "data: [DONE]"  # the stream in flight ran to its end
        finish = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]
                  if json.loads(e[6:])["choices"]]
        assert finish[-1] == "length"
        assert stack.process.wait(60) == 0
        with pytest.raises(httpx.TransportError):
            http.post("/chat/completions", json=ask())
    finally:
        stack.stop()
