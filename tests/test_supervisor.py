"""The supervisor on plain processes: a failed start is retried on a fresh port, a crashed
worker comes back on a fresh port and the router's client follows it, a fixed port is kept,
and a start that keeps failing is reported with its cause."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.config.deployment import Timeouts
from serving.launcher import supervisor as supervisor_module
from serving.launcher.supervisor import Supervisor, WorkerFailed, WorkerSpec, free_port
from serving.upstream.worker import Worker
from tests.support.wait import await_until

# Serves `folder` (which holds a `health` file) over HTTP on the port after `--port`, after
# noting that port in `folder/ports`. While `folder/fail-once` exists, removes it and dies
# instead: a transient failure.
SERVER = """
import os, sys
folder, port = sys.argv[1], sys.argv[sys.argv.index("--port") + 1]
with open(os.path.join(folder, "ports"), "a") as f:
    f.write(port + "\\n")
with open(os.path.join(folder, "metrics-folder"), "w") as f:
    f.write(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "-"))
flag = os.path.join(folder, "fail-once")
if os.path.exists(flag):
    os.remove(flag)
    print("RuntimeError: the first start fails", flush=True)
    sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                          "--directory", folder, port])
"""


def server_spec(folder: Path, port: int | None = None, fail_once: bool = False) -> WorkerSpec:
    (folder / "health").write_text("ok")
    if fail_once:
        (folder / "fail-once").touch()
    return WorkerSpec(name="w", argv=[sys.executable, "-c", SERVER, str(folder)], env={},
                      port=port, startup_timeout_s=30)


def ports_used(folder: Path) -> list[int]:
    return [int(line) for line in (folder / "ports").read_text().split()]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port somebody else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_worker_whose_port_is_taken_starts_again_on_a_fresh_one(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
):
    # The first free port chosen is taken before the worker binds it, as when another
    # process grabs it in between.
    choices = iter([taken_port])
    monkeypatch.setattr(supervisor_module, "free_port", lambda: next(choices, None) or free_port())
    sup = Supervisor(server_spec(tmp_path), backoff_initial_s=0.1)

    async def run() -> None:
        await sup.start()
        try:
            assert sup.state == "up"
            first, second = ports_used(tmp_path)
            assert first == taken_port and second != taken_port
            assert sup.url == f"http://127.0.0.1:{second}"
        finally:
            await sup.stop()

    asyncio.run(run())


def test_a_fixed_port_is_kept_when_a_start_is_retried(tmp_path: Path):
    port = free_port()
    sup = Supervisor(server_spec(tmp_path, port=port, fail_once=True), backoff_initial_s=0.1)

    async def run() -> None:
        await sup.start()
        await sup.stop()

    asyncio.run(run())
    assert ports_used(tmp_path) == [port, port]


def test_a_crashed_worker_comes_back_on_a_fresh_port_and_the_router_follows(tmp_path: Path):
    sup = Supervisor(server_spec(tmp_path), backoff_initial_s=0.1)

    async def run() -> None:
        await sup.start()
        worker = Worker("w", sup.url, Timeouts(), max_connections=4)
        sup.on_up.append(worker.member("w").move_to)  # as `serving up` wires it
        try:
            assert worker.serves(await worker.probe())
            old_port, old_pid = sup.port, sup.process.pid
            os.killpg(old_pid, signal.SIGKILL)
            await await_until(lambda: sup.restarts == 1 and sup.state == "up", "the restart")
            assert sup.port != old_port
            assert ports_used(tmp_path) == [old_port, sup.port]
            assert worker.member("w").base_url == sup.url
            assert worker.serves(await worker.probe())
        finally:
            await worker.aclose()
            await sup.stop()

    asyncio.run(run())


def test_a_worker_that_keeps_dying_reports_its_first_error():
    crash = "print('ValueError: no such model'); print('bye'); raise SystemExit(2)"
    sup = Supervisor(WorkerSpec(name="w", argv=[sys.executable, "-c", crash], env={}),
                     backoff_initial_s=0.05)
    with pytest.raises(WorkerFailed) as failed:
        asyncio.run(sup.start())
    message = str(failed.value)
    assert "exit code 2, attempt 3" in message
    assert "ValueError: no such model" in message


@pytest.mark.parametrize("given", [{}, {"PROMETHEUS_MULTIPROC_DIR": "/routers"}])
def test_the_routers_metrics_folder_reaches_only_the_processes_given_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, str]):
    """Router process 0 keeps its metrics in a folder named in its environment; a worker
    (vLLM) that inherited it would write its own metrics there."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/routers")
    spec = server_spec(tmp_path)
    spec.env.update(given)
    sup = Supervisor(spec)

    async def run() -> None:
        await sup.start()
        await sup.stop()

    asyncio.run(run())
    assert (tmp_path / "metrics-folder").read_text() == given.get("PROMETHEUS_MULTIPROC_DIR", "-")
