"""Start order on a shared GPU: vLLM healthy before the media workers on its GPU start.

The ordering runs real processes through the real supervisors: the fake "media" worker checks,
as its first act, that the fake "vLLM" worker already answers its health check, and exits with
an error otherwise, so a media worker started too early fails the start.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from serving.config import load_config
from serving.launcher.order import start_after, start_in_order
from serving.launcher.supervisor import Supervisor, WorkerFailed, WorkerSpec, free_port

ROOT = Path(__file__).resolve().parent.parent

# A slow-starting server (as vLLM is): loads for a moment, then serves HTTP.
SLOW = """
import sys, time
time.sleep(1.5)
import http.server
http.server.test(http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]),
                 bind="127.0.0.1")
"""

# Records that it started, fails unless the other server is already up, then serves HTTP.
AFTER = """
import os, sys, urllib.request
port, other, flag = sys.argv[1], sys.argv[2], sys.argv[3]
open(flag, "w").close()
try:
    urllib.request.urlopen(f"http://127.0.0.1:{other}/", timeout=5)
except OSError as e:
    print(f"RuntimeError: started before the vLLM worker was healthy: {e}", flush=True)
    sys.exit(4)
os.execv(sys.executable, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", port])
"""

CRASH = "print('ValueError: No available memory for the cache blocks'); raise SystemExit(1)"


def supervisor(name: str, argv: list[str], port: int) -> Supervisor:
    spec = WorkerSpec(name=name, argv=[sys.executable, "-c", *argv], env={}, port=port,
                      startup_timeout_s=60, health_path="/")
    return Supervisor(spec, startup_attempts=1, backoff_initial_s=0.05)


def test_media_workers_start_after_vllm_on_a_shared_gpu(tmp_path: Path):
    chat_port, media_port = free_port(), free_port()
    flag = tmp_path / "media-started"
    chat = supervisor("chat", [SLOW, str(chat_port)], chat_port)
    media = supervisor("images", [AFTER, str(media_port), str(chat_port), str(flag)],
                       media_port)

    async def run() -> None:
        try:
            await start_in_order([media, chat], {"images": {"chat"}, "chat": set()})
            assert chat.state == "up" and media.state == "up"
        finally:
            await asyncio.gather(chat.stop(), media.stop())

    asyncio.run(run())
    assert flag.exists()


def test_a_vllm_worker_that_fails_keeps_its_gpu_neighbours_from_starting(tmp_path: Path):
    chat_port, media_port = free_port(), free_port()
    flag = tmp_path / "media-started"
    chat = supervisor("chat", [CRASH], chat_port)
    media = supervisor("images", [AFTER, str(media_port), str(chat_port), str(flag)],
                       media_port)

    async def run() -> None:
        try:
            await start_in_order([media, chat], {"images": {"chat"}, "chat": set()})
        finally:
            await asyncio.gather(chat.stop(), media.stop())

    with pytest.raises(WorkerFailed, match="No available memory"):
        asyncio.run(run())
    assert not flag.exists()


def test_who_waits_for_whom():
    one_gpu = start_after(load_config([ROOT / "configs" / "gpu-h100.yaml"]))
    assert one_gpu["chat"] == set()
    assert all(one_gpu[name] == {"chat"} for name in one_gpu if name != "chat")
    # On CPU there is no shared memory to race for: everything starts at once.
    assert all(not deps for deps in start_after(load_config([ROOT / "configs" / "cpu.yaml"]))
               .values())


def test_media_on_another_gpu_does_not_wait(tmp_path: Path):
    overlay = tmp_path / "two.yaml"
    overlay.write_text("workers:\n  images: {gpus: [1]}\n  videos: {gpus: [1]}\n"
                       "  speech: {gpus: null}\n")
    after = start_after(load_config([ROOT / "configs" / "gpu-h100.yaml", overlay]))
    assert after["images"] == after["videos"] == set()
    assert after["transcription"] == {"chat"}
    assert after["speech"] == {"chat"}  # no `gpus`: it may use every GPU, chat's included
