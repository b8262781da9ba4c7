"""The launcher: a slow worker is a 504, a crashed one a 503 until it is restarted, and
SIGTERM leaves no process behind. Uses its own stack, so it can break it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import CHAT_MODEL, start_stack

pytestmark = pytest.mark.e2e

BODY = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def wait_ready(base_url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(base_url + "/ready", timeout=5).status_code == 200:
            return
        time.sleep(1)
    raise AssertionError("stack did not become ready again")


def test_timeouts_crash_restart_and_clean_shutdown(tmp_path: Path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("router: {timeouts: {chat_s: 3}}\n")
    stack = start_stack(tmp_path, "configs/cpu.yaml", str(overlay))
    try:
        http = httpx.Client(base_url=stack.v1, timeout=60,
                            headers={"Authorization": f"Bearer {stack.key}"})
        # The 3 s timeout is for the SIGSTOP below; a first answer on a loaded machine may
        # take longer (a 504 then), so wait until the worker answers within it.
        deadline = time.monotonic() + 180
        while (r := http.post("/chat/completions", json=BODY)).status_code != 200:
            assert r.status_code == 504 and time.monotonic() < deadline, r.text
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
        time.sleep(0.5)
        r = http.post("/chat/completions", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        assert httpx.get(stack.base_url + "/ready").status_code == 503
        wait_ready(stack.base_url)
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
    time.sleep(1)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {alive}"
