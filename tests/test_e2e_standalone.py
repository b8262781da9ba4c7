"""`serving router` and `serving worker`: the stack's parts as separate processes, the way a
cluster runs them, and a second router beside `serving up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from serving.launcher.supervisor import free_port
from tests.conftest import CHAT_MODEL, ROOT
from tests.support.harness import start_background_router
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CPU = ROOT / "configs" / "cpu.yaml"


def test_a_second_router_serves_the_stacks_workers(stack, tmp_path: Path):
    router = start_background_router([CPU], tmp_path / "b", stack=stack)
    try:
        client = openai.OpenAI(base_url=router.v1, api_key=stack.key, max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
        assert r.usage.completion_tokens > 0
        # Its own ledger (its own state dir here) has the request, under the stack's key.
        usage = httpx.get(router.v1 + "/usage", timeout=30,
                          headers={"Authorization": f"Bearer {stack.admin_key}"})
        assert usage.status_code == 200, usage.text
        assert usage.json()["data"][0]["requests"] >= 1
        assert httpx.get(router.base_url + "/ready", timeout=30).status_code == 200
    finally:
        assert router.stop() == 0


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    def answers() -> bool:
        assert proc.poll() is None, f"exited before {url} answered:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, f"{url} to answer", timeout_s=timeout_s, every_s=0.2)


def test_worker_and_router_as_separate_processes(tmp_path: Path):
    """An image worker alone, and a router that reaches it only through `endpoints`."""
    port = free_port()
    log = tmp_path / "worker.log"
    env = {**os.environ, "SERVING_STATE_DIR": str(tmp_path / "state")}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "worker", "images", "-c", str(CPU),
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    router = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", worker, log)
        overlay = tmp_path / "endpoints.yaml"
        overlay.write_text(
            "workers:\n"
            f"  images: {{endpoints: ['http://127.0.0.1:{port}']}}\n"
            "  chat: {enabled: false}\n  edits: {enabled: false}\n  videos: {enabled: false}\n"
            "  speech: {enabled: false}\n  transcription: {enabled: false}\n")
        key = "sk-standalone-test"
        router = start_background_router([CPU, overlay], tmp_path / "router",
                                         env={"SERVING_API_KEYS": key})
        client = openai.OpenAI(base_url=router.v1, api_key=key, max_retries=0, timeout=120)
        r = client.images.generate(model="flux-tiny", prompt="a lighthouse", size="128x128")
        assert r.data[0].b64_json
        assert httpx.get(router.base_url + "/ready", timeout=30).status_code == 200

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        with pytest.raises(openai.APIStatusError) as e:
            client.images.generate(model="flux-tiny", prompt="a lighthouse", size="128x128")
        assert e.value.status_code == 503
        assert e.value.body["code"] == "worker_unavailable"
        assert httpx.get(router.base_url + "/ready", timeout=30).status_code == 503
    finally:
        if router is not None:
            router.stop()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_router_without_worker_urls_is_a_config_error(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "router", "-c", str(CPU), "--port", "0"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SERVING_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "workers.chat: `serving router` starts no worker" in result.stderr
