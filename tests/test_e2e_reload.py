"""Reloading a running stack with real workers, under load, through the openai client.

One stack (chat and speech to start with) takes three reloads in turn, each asked for a
different way:
1. `POST /v1/admin/reload`: chat's `max_model_len` changes (its vLLM is replaced blue/green),
   the image worker is added and a key replaces another, while chat and speech requests keep
   coming and a stream runs across the swap;
2. SIGHUP: the image worker is removed while an image is being drawn;
3. `serving reload`: a broken config is refused, then a speech worker that cannot start is
   reported as failed while the old one keeps serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serving.config.keys import hash_key
from tests.conftest import CHAT_MODEL, ROOT
from tests.support.harness import (
    BackgroundStack,
    start_background_router,
    start_background_stack,
)
from tests.support.wait import wait_until

# A vLLM start or two per test, on a machine that may be slow and busy.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

OLD_KEY, NEW_KEY = "sk-reload-old-0123456789", "sk-reload-new-0123456789"
RELOAD_S = 900  # a vLLM start on a slow, busy machine; never a timing assertion


def overlay(path: Path, *, key: str, chat_len: int, images: bool, speech_env: str = "") -> None:
    path.write_text(f"""
router:
  api_keys: [{{name: tenant, sha256: {hash_key(key)}}}]
workers:
  chat: {{engine_args: {{max_model_len: {chat_len}}}}}
  images: {{enabled: {str(images).lower()}}}
  edits: {{enabled: false}}
  videos: {{enabled: false}}
  transcription: {{enabled: false}}
  speech: {{env: {{{speech_env}}}}}
""")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundStack]:
    tmp = tmp_path_factory.mktemp("reload")
    overlay(tmp / "deployment.yaml", key=OLD_KEY, chat_len=8192, images=False)
    s = start_background_stack([ROOT / "configs" / "cpu.yaml", tmp / "deployment.yaml"], tmp)
    yield s
    s.stop()


def runtime(stack: BackgroundStack) -> dict:
    return json.loads((stack.log.parent / "runtime.json").read_text())


def admin(stack: BackgroundStack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=120,
                        headers={"Authorization": f"Bearer {stack.admin_key}"})


def applied(stack: BackgroundStack, reload_id: str) -> dict:
    """The reload's status once it is no longer pending."""
    with admin(stack) as http:
        def done() -> dict | None:
            status = http.get("/v1/admin/reload").json()
            return status if status["id"] == reload_id and status["status"] != "pending" \
                else None

        return wait_until(done, f"reload {reload_id}", timeout_s=RELOAD_S, every_s=0.5)


class Load:
    """Chat and speech requests one after another, in two threads, until stopped."""

    def __init__(self, stack: BackgroundStack):
        self.client = openai.OpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0,
                                    timeout=300)
        self.stop = threading.Event()
        self.done = {"chat": 0, "speech": 0}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(kind,), daemon=True)
                        for kind in self.done]

    def _loop(self, kind: str) -> None:
        while not self.stop.is_set():
            try:
                if kind == "chat":
                    self.client.chat.completions.create(
                        model=CHAT_MODEL, max_tokens=4,
                        messages=[{"role": "user", "content": "Say hi."}])
                else:
                    self.client.audio.speech.create(model="hibari", voice="alloy",
                                                    input="Hello there.",
                                                    response_format="wav").read()
                self.done[kind] += 1
            except openai.OpenAIError as e:
                self.failures.append(f"{kind}: {e}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def long_prompt() -> list[dict]:
    return [{"role": "user", "content": "Summarise this: " + "the cat sat on the mat. " * 200}]


def test_a_reload_replaces_chat_adds_images_and_swaps_keys_under_load(stack):
    tmp = stack.log.parent
    # A router beside the stack, on the same files: it takes the same change.
    follower = start_background_router(
        [ROOT / "configs" / "cpu.yaml", tmp / "deployment.yaml"], tmp / "follower",
        stack=stack)
    client = openai.OpenAI(base_url=stack.v1, api_key=OLD_KEY, max_retries=0, timeout=300)
    before = runtime(stack)["workers"]
    assert client.chat.completions.create(model=CHAT_MODEL, max_tokens=2,
                                          messages=long_prompt()).usage.prompt_tokens > 1024
    stream = client.chat.completions.create(
        model=CHAT_MODEL, max_tokens=300, temperature=1.0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Tell a very long story."}])
    chunks = [next(stream)]  # it runs on the old worker, across the swap

    with Load(stack) as load, admin(stack) as http:
        wait_until(lambda: min(load.done.values()) > 0, "load on chat and speech")
        overlay(tmp / "deployment.yaml", key=NEW_KEY, chat_len=1024, images=True)
        r = http.post("/v1/admin/reload")
        assert r.status_code == 202, r.text
        pending = r.json()
        assert pending["status"] == "pending"
        assert {n: c["action"] for n, c in pending["workers"].items()} == {
            "chat": "replaced", "speech": "unchanged", "images": "added"}
        again = http.post("/v1/admin/reload")
        assert again.status_code == 409 and again.json()["error"]["code"] == "reload_in_progress"
        chunks += list(stream)
        status = applied(stack, pending["id"])
        wait_until(lambda: min(load.done.values()) > 3, "load after the reload")
    assert status["status"] == "applied", status
    assert status["workers"]["chat"]["strategy"] == "blue_green"
    assert load.failures == []

    # The stream that started before the swap finished whole, with its usage.
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    after = runtime(stack)["workers"]
    assert after["speech"]["pid"] == before["speech"]["pid"]  # untouched
    assert after["chat"]["pid"] != before["chat"]["pid"]  # replaced
    assert not psutil_alive(before["chat"]["pid"])
    new = openai.OpenAI(base_url=stack.v1, api_key=NEW_KEY, max_retries=0, timeout=300)
    with pytest.raises(openai.BadRequestError):  # longer than the new context
        new.chat.completions.create(model=CHAT_MODEL, max_tokens=2, messages=long_prompt())
    catalog = {m["id"]: m for m in httpx.get(
        stack.v1 + "/catalog", headers={"Authorization": f"Bearer {NEW_KEY}"}).json()["data"]}
    assert catalog[CHAT_MODEL]["context_length"] == 1024
    assert new.images.generate(model="flux-tiny", prompt="a cat", size="128x128").data
    with pytest.raises(openai.AuthenticationError):  # the key the reload removed
        client.models.list()

    # The router beside the stack followed: the new key, the new context, the new worker.
    def followed() -> bool:
        r = httpx.get(follower.v1 + "/catalog", headers={"Authorization": f"Bearer {NEW_KEY}"})
        return r.status_code == 200 and {m["id"]: m for m in r.json()["data"]}[
            CHAT_MODEL]["context_length"] == 1024

    wait_until(followed, "the router beside the stack to follow the reload")
    beside = openai.OpenAI(base_url=follower.v1, api_key=NEW_KEY, max_retries=0, timeout=300)
    assert beside.chat.completions.create(model=CHAT_MODEL, max_tokens=2, messages=[
        {"role": "user", "content": "hi"}]).usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=follower.v1, api_key=OLD_KEY, max_retries=0).models.list()
    assert follower.stop() == 0


def test_sighup_removes_the_image_worker_after_its_request(stack):
    tmp = stack.log.parent
    http = httpx.Client(base_url=stack.v1, timeout=300,
                        headers={"Authorization": f"Bearer {NEW_KEY}"})
    drawing: dict = {}
    draw = threading.Thread(target=lambda: drawing.update(r=http.post(
        "/images/generations", json={"model": "flux-tiny", "prompt": "slow", "size": "256x256",
                                     "n": 4, "num_inference_steps": 50})))
    with admin(stack) as control:
        previous = control.get("/v1/admin/reload").json()["id"]
        draw.start()
        overlay(tmp / "deployment.yaml", key=NEW_KEY, chat_len=1024, images=False)
        os.kill(stack.process.pid, signal.SIGHUP)
        status = wait_until(lambda: (s := control.get("/v1/admin/reload").json())["id"]
                            != previous and s["status"] != "pending" and s,
                            "the reload SIGHUP asked for", timeout_s=RELOAD_S, every_s=0.5)
    draw.join(300)
    assert status["status"] == "applied" and status["workers"]["images"]["action"] == "removed"
    assert drawing["r"].status_code == 200  # in flight when asked: it finished first
    gone = http.post("/images/generations", json={"model": "flux-tiny", "prompt": "a cat"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert "flux-tiny" not in {m["id"] for m in http.get("/catalog").json()["data"]}
    assert "images" not in runtime(stack)["workers"]


def test_serving_reload_refuses_a_broken_config_and_survives_a_failed_start(stack):
    tmp = stack.log.parent
    command = [sys.executable, "-m", "serving.cli", "reload", "--runtime-file",
               str(tmp / "runtime.json"), "--key", stack.admin_key]
    speech_pid = runtime(stack)["workers"]["speech"]["pid"]
    good = (tmp / "deployment.yaml").read_text()
    (tmp / "deployment.yaml").write_text(good + "router: {no_such_setting: 1}\n")
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert "no_such_setting" in broken.stdout and "deployment.yaml" in broken.stdout

    # A speech worker that cannot start (its Python cannot find its standard library).
    overlay(tmp / "deployment.yaml", key=NEW_KEY, chat_len=1024, images=False,
            speech_env="PYTHONHOME: /nonexistent")
    failed = subprocess.run(command, capture_output=True, text=True, timeout=RELOAD_S)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    status = json.loads(failed.stdout[failed.stdout.index("{"):])
    assert status["status"] == "failed" and status["workers"]["speech"]["action"] == "replaced"
    assert status["workers"]["speech"]["result"].startswith("failed")
    new = openai.OpenAI(base_url=stack.v1, api_key=NEW_KEY, max_retries=0, timeout=300)
    assert new.audio.speech.create(model="hibari", voice="alloy", input="Still here.",
                                   response_format="wav").read()
    assert runtime(stack)["workers"]["speech"]["pid"] == speech_pid
    metrics = admin(stack).get("/metrics").text
    assert 'serving_reloads_total{result="failed"} 1.0' in metrics
    assert 'serving_reloads_total{result="refused"} 1.0' in metrics


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
