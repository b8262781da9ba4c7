"""The launcher: a slow worker is a 504, a crashed one a 503 until it is restarted, and
SIGTERM leaves no process behind. Uses its own stack, so it can break it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import CHAT_MODEL, start_stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

BODY = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def ready_status(base_url: str) -> int:
    return httpx.get(base_url + "/ready", timeout=5).status_code


def test_timeouts_crash_restart_and_clean_shutdown(tmp_path: Path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("router: {timeouts: {chat_s: 3}}\n")
    stack = start_stack(tmp_path, "configs/cpu.yaml", str(overlay))
    try:
        http = httpx.Client(base_url=stack.v1, timeout=60,
                            headers={"Authorization": f"Bearer {stack.key}"})
        # The 3 s timeout is for the SIGSTOP below; a first answer on a loaded machine may
        # take longer (a 504 then), so wait until the worker answers within it.
        def answers_in_time() -> bool:
            r = http.post("/chat/completions", json=BODY)
            assert r.status_code in (200, 504), r.text
            return r.status_code == 200

        wait_until(answers_in_time, "an answer within the 3 s timeout", timeout_s=180,
                   every_s=0)
        worker_pid = stack.runtime["workers"]["chat"]["pid"]

        # A worker that stops answering: the client gets a 504 envelope, not a hang.
        os.killpg(worker_pid, signal.SIGSTOP)
        try:
            r = http.post("/chat/completions", json=BODY)
        finally:
            os.killpg(worker_pid, signal.SIGCONT)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"

        # A worker that crashes: 503 with Retry-After while down, then restarted.
        os.kill(worker_pid, signal.SIGKILL)
        wait_until(lambda: ready_status(stack.base_url) == 503, "/ready to see the worker down")
        r = http.post("/chat/completions", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        wait_until(lambda: ready_status(stack.base_url) == 200, "the restarted worker",
                   timeout_s=300, every_s=1)
        assert http.post("/chat/completions", json=BODY).status_code == 200
        # It came back on a fresh port (none is configured), where the router reached it;
        # the runtime file says where it is now.
        now = json.loads((tmp_path / "runtime.json").read_text())["workers"]["chat"]
        assert now["pid"] != worker_pid and now["url"] != stack.worker_url("chat")
        assert httpx.get(now["url"] + "/health").status_code == 200
        assert "restarting in" in stack.log_text()

        # Lines from the worker are prefixed with its name.
        assert "\nchat | " in stack.log_text()

        tree = psutil.Process(stack.process.pid).children(recursive=True)
        assert len(tree) >= 2  # the vLLM API server and its engine core at least
    finally:
        code = stack.stop()
    assert code == 0

    def left_behind() -> list[psutil.Process]:
        return [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(lambda: not left_behind(), "every process of the stack to end", timeout_s=30)


def test_serving_up_prints_what_you_have_and_its_curl_line_works(stack):
    """Once ready, `serving up` prints one screen: the URL, where the key is, each model with
    its endpoints, and a curl line that, run as printed (with the key where it says), answers."""
    import subprocess

    log = stack.log_text()
    screen = log[log.index("serving: ready\n"):].split("\n\n")[0]
    lines = screen.splitlines()
    assert f"  URL:      {stack.base_url}/v1" in lines
    assert any(line.startswith("  API key") for line in lines)
    assert any(line.split()[:2] == [CHAT_MODEL, "/v1/chat/completions"] for line in lines)
    curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
    # This stack's keys are configured (SERVING_API_KEYS): the screen says to set
    # SERVING_API_KEY to one of them.
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SERVING_API_KEY": stack.key})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["model"] == CHAT_MODEL and answer["choices"][0]["message"]["content"]
