"""The standard LLM benchmark tools against the router, on chat and completions, as their users
run them: `vllm bench serve` (random dataset: `ignore_eos`, exact output lengths), guidellm and
aiperf (each in its own venv, made by scripts/bench_tool_venvs.sh). No request fails, every
output has the length asked for, and the router's ledger bills exactly the tokens the worker
reports generating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CHAT_MODEL
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
PROMPTS = 8


def worker_tokens(stack) -> dict[str, float]:
    """The chat worker's own counters: prompt and generated tokens since it started."""
    text = httpx.get(stack.worker_url("chat") + "/metrics", timeout=30).text
    totals = {"prompt": 0.0, "generation": 0.0}
    for family in text_string_to_metric_families(text):
        for kind in totals:
            if family.name == f"vllm:{kind}_tokens":
                totals[kind] += sum(s.value for s in family.samples
                                    if s.name.endswith("_total"))
    return totals


def ledger_tokens(stack, since: float, requests: int) -> dict:
    """The other key's ledger totals since `since`, once `requests` rows are in."""
    with httpx.Client(base_url=stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {stack.admin_key}"}) as admin:
        def rows() -> dict | None:
            r = admin.get("/v1/usage", params={"since": str(since), "by": "key"})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            row = next((row for row in data if row["key"] == "env-2"), None)
            assert row is None or row["requests"] <= requests, data
            return row if row and row["requests"] == requests else None

        return wait_until(rows, "the bench's rows in the ledger", timeout_s=60, every_s=0.5)


ENDPOINTS = ["/v1/chat/completions", "/v1/completions"]
INPUT_TOKENS, OUTPUT_TOKENS = 32, 16
TOOL_VENVS = ROOT / ".cache" / "bench-venvs"


@pytest.fixture(scope="module")
def tool_venvs() -> Path:
    """guidellm's and aiperf's venvs (installed on first use, a few minutes; then a no-op)."""
    done = subprocess.run(["bash", str(ROOT / "scripts/bench_tool_venvs.sh")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return TOOL_VENVS


def run_tool(cmd: list[str], stack, env: dict[str, str] | None = None) -> None:
    env = {**os.environ, "OPENAI_API_KEY": stack.other_key, **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in env.items() if v})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def vllm_bench(stack, out: Path, endpoint: str, tokenizer: str, venvs: Path) -> tuple:
    """`vllm bench serve` from the project's venv: (completed, failed, output tokens)."""
    backend = "openai-chat" if "chat" in endpoint else "openai"
    run_tool([sys.executable, str(ROOT / "scripts/vllm_bench.py"), "bench", "serve",
              "--backend", backend, "--base-url", stack.base_url, "--endpoint", endpoint,
              "--model", CHAT_MODEL, "--tokenizer", tokenizer, "--dataset-name", "random",
              "--random-input-len", str(INPUT_TOKENS),
              "--random-output-len", str(OUTPUT_TOKENS), "--num-prompts", str(PROMPTS),
              "--max-concurrency", "4", "--save-result", "--result-dir", str(out),
              "--result-filename", "result.json", "--disable-tqdm"], stack)
    result = json.loads((out / "result.json").read_text())
    return result["completed"], result["failed"], result["total_output_tokens"]


def guidellm(stack, out: Path, endpoint: str, tokenizer: str, venvs: Path) -> tuple:
    """guidellm's synthetic text at a fixed concurrency: (successful, errored + incomplete,
    output tokens)."""
    run_tool([str(venvs / "guidellm/bin/guidellm"), "run",
              "--backend", f"kind=openai_http,target={stack.base_url},model={CHAT_MODEL},"
              f"api_key={stack.other_key},request_format={endpoint}",
              "--profile", "kind=concurrent,streams=4",
              "--constraint", f"kind=max_requests,count={PROMPTS}",
              "--data", f"kind=synthetic_text,prompt_tokens={INPUT_TOKENS},"
              f"output_tokens={OUTPUT_TOKENS}",
              "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
              "--output", f"kind=json,path={out / 'result.json'}", "--disable-progress"], stack)
    metrics = json.loads((out / "result.json").read_text())["benchmarks"][0]["metrics"]
    totals = metrics["request_totals"]
    return (totals["successful"], totals["errored"] + totals["incomplete"],
            metrics["output_token_count"]["successful"]["total_sum"])


def aiperf(stack, out: Path, endpoint: str, tokenizer: str, venvs: Path) -> tuple:
    """aiperf's synthetic inputs at a fixed concurrency: (completed, failed, output tokens).
    Its payload has no `ignore_eos`; aiperf's documented way to add one is --extra-inputs."""
    run_tool([str(venvs / "aiperf/bin/aiperf"), "profile", "--url", stack.base_url,
              "--model", CHAT_MODEL, "--endpoint-type",
              "chat" if "chat" in endpoint else "completions", "--streaming",
              "--api-key", stack.other_key, "--tokenizer", tokenizer,
              "--request-count", str(PROMPTS), "--concurrency", "4",
              "--synthetic-input-tokens-mean", str(INPUT_TOKENS),
              "--output-tokens-mean", str(OUTPUT_TOKENS), "--extra-inputs", "ignore_eos:true",
              "--artifact-dir", str(out), "--ui-type", "none"], stack,
             # Under HF_HUB_OFFLINE aiperf looks a tokenizer up in the hub's cache only, which
             # a local directory is not in; without it, a directory loads with no network.
             env={"HF_HUB_OFFLINE": ""})
    result = json.loads((out / "profile_export_aiperf.json").read_text())
    completed = result["completed_request_count"]["avg"]
    failed = sum(error["count"] for error in result["error_summary"])
    return completed, failed, result["total_usage_completion_tokens"]["avg"]


TOOLS: dict[str, Callable[..., tuple]] = {
    "vllm-bench": vllm_bench, "guidellm": guidellm, "aiperf": aiperf}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("tool", list(TOOLS))
def test_benchmark_tool_through_the_router(stack, tool_venvs, tmp_path, tool, endpoint):
    tokenizer = httpx.get(stack.worker_url("chat") + "/v1/models").json()["data"][0]["root"]
    # The previous run's rows are all in (it waited for them), so they are older than `since`.
    before, since = worker_tokens(stack), time.time()
    completed, failed, output_tokens = TOOLS[tool](stack, tmp_path, endpoint, tokenizer,
                                                   tool_venvs)
    assert (completed, failed) == (PROMPTS, 0)
    assert output_tokens == PROMPTS * OUTPUT_TOKENS  # ignore_eos reached vLLM
    row = ledger_tokens(stack, since, PROMPTS)
    after = worker_tokens(stack)
    assert row["completion_tokens"] == after["generation"] - before["generation"]
    assert row["prompt_tokens"] == after["prompt"] - before["prompt"]
