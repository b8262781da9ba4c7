"""The stack behind a LiteLLM gateway, by both of LiteLLM's Anthropic routes: a model name in
its `model_list` (provider `anthropic/`, `api_base` the router, the router's key), and the
pass-through `/anthropic/...` (`ANTHROPIC_API_BASE` / `ANTHROPIC_API_KEY`). The `anthropic` SDK
talks to LiteLLM only, with LiteLLM's master key. A message and a stream come back with usage,
and the router's ledger bills each route's key what the SDK saw.

LiteLLM's proxy lives in its own venv (scripts/bench_tool_venvs.sh litellm, made here on first
use): it pins its own FastAPI, OpenAI and pydantic."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
import yaml

from serving.launcher.supervisor import free_port
from tests.conftest import CHAT_MODEL
from tests.support.harness import terminate
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "bench-venvs" / "litellm"
GATEWAY_MODEL = "smollm2-via-litellm"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens")


def litellm_binary() -> Path:
    """LiteLLM's proxy at the script's pin: installed on first use (about a minute and
    750 MB), at once after that."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "bench_tool_venvs.sh"), "litellm"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return VENV / "bin" / "litellm"


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """LiteLLM's proxy on a free port, in front of the stack; its URL and master key. The model
    route bills the stack's admin key, the pass-through its other key."""
    binary = litellm_binary()
    tmp = tmp_path_factory.mktemp("litellm")
    master_key = "sk-litellm-" + secrets.token_hex(16)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": GATEWAY_MODEL, "litellm_params": {
            "model": f"anthropic/{CHAT_MODEL}", "api_base": stack.base_url,
            "api_key": stack.admin_key}}],
        "general_settings": {"master_key": master_key},
    }))
    port = free_port()
    log = tmp / "litellm.log"
    env = {**os.environ,
           # The cost map that LiteLLM ships, not a download; no telemetry.
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    env.pop("ANTHROPIC_BASE_URL", None)
    env |= {"ANTHROPIC_API_BASE": stack.base_url, "ANTHROPIC_API_KEY": stack.other_key}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")[-4000:]
        try:
            return httpx.get(url + "/health/readiness", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "LiteLLM's proxy to answer", timeout_s=300, every_s=0.5)
        yield url, master_key
    finally:
        try:
            terminate(process, 30)
        finally:
            print(log.read_text(errors="replace")[-3000:])


def usage_of(message: anthropic.types.Message) -> dict[str, int]:
    return {f: getattr(message.usage, f) or 0 for f in USAGE_FIELDS}


# (path under LiteLLM, model name the client sends, the ledger's name of the key LiteLLM uses)
ROUTES = {"model_list": ("", GATEWAY_MODEL, "admin-1"),
          "pass-through": ("/anthropic", CHAT_MODEL, "env-2")}


@pytest.mark.parametrize("route", ROUTES)
def test_a_message_and_a_stream_through_litellm_are_billed_as_the_sdk_saw(gateway, stack, route):
    url, master_key = gateway
    path, model, key_name = ROUTES[route]
    claude = anthropic.Anthropic(base_url=url + path, api_key=master_key, max_retries=0,
                                 timeout=120)
    since = time.time()
    ask = {"model": model, "max_tokens": 8,
           "messages": [{"role": "user", "content": "Count from one to twenty."}]}
    message = claude.messages.create(**ask)
    assert message.content[0].type == "text" and message.content[0].text
    whole = usage_of(message)
    assert whole["input_tokens"] + whole["cache_read_input_tokens"] > 0
    assert 0 < whole["output_tokens"] <= 8

    with claude.messages.stream(**ask) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "".join(b.text for b in final.content if b.type == "text")
    streamed = usage_of(final)
    assert streamed["input_tokens"] + streamed["cache_read_input_tokens"] > 0
    assert 0 < streamed["output_tokens"] <= 8

    def row() -> dict | None:
        r = httpx.get(stack.base_url + "/v1/usage", timeout=30,
                      params={"since": str(since), "by": "key,endpoint,status"},
                      headers={"Authorization": f"Bearer {stack.admin_key}"})
        assert r.status_code == 200, r.text
        found = [row for row in r.json()["data"]
                 if row["key"] == key_name and row["endpoint"] == "/v1/messages"]
        assert all(row["status"] == 200 for row in found), found
        return found[0] if found and found[0]["requests"] >= 2 else None

    billed = wait_until(row, "both requests in the ledger", timeout_s=60, every_s=0.2)
    assert billed["requests"] == 2
    assert billed["prompt_tokens"] == sum(
        u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        for u in (whole, streamed))
    assert billed["completion_tokens"] == whole["output_tokens"] + streamed["output_tokens"]
    assert billed["cache_read_tokens"] == (whole["cache_read_input_tokens"]
                                           + streamed["cache_read_input_tokens"])
