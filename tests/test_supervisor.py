"""The supervisor on plain processes: a failed start is retried, then reported with its cause."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from serving.launcher.stack import free_port
from serving.launcher.supervisor import Supervisor, WorkerFailed, WorkerSpec

# Dies on its first start (a transient failure), then serves HTTP on the given port.
FLAKY = """
import os, sys
flag, port = sys.argv[1], sys.argv[2]
if not os.path.exists(flag):
    open(flag, "w").close()
    print("RuntimeError: the first start fails", flush=True)
    sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", port])
"""


def spec(argv: list[str], port: int) -> WorkerSpec:
    return WorkerSpec(name="w", argv=argv, env={}, port=port, startup_timeout_s=30,
                      health_path="/")


def test_a_worker_that_dies_while_starting_is_tried_again(tmp_path: Path):
    port = free_port()
    sup = Supervisor(spec([sys.executable, "-c", FLAKY, str(tmp_path / "flag"), str(port)],
                          port), backoff_initial_s=0.1)

    async def run() -> None:
        await sup.start()
        assert sup.state == "up"
        await sup.stop()

    asyncio.run(run())


def test_a_worker_that_keeps_dying_reports_its_first_error(tmp_path: Path):
    port = free_port()
    crash = "print('ValueError: no such model'); print('bye'); raise SystemExit(2)"
    sup = Supervisor(spec([sys.executable, "-c", crash], port), backoff_initial_s=0.05)
    with pytest.raises(WorkerFailed) as failed:
        asyncio.run(sup.start())
    message = str(failed.value)
    assert "exit code 2, attempt 3" in message
    assert "ValueError: no such model" in message
