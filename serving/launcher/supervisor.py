"""Child processes for workers: start, wait for health, restart on crash, stop cleanly.

Each worker runs in its own process group, so stopping it stops everything it spawned (vLLM
starts an engine-core process of its own). Children also get SIGTERM from the kernel if the
launcher itself dies without cleaning up (PR_SET_PDEATHSIG), so none is ever left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from serving.router import SHARED_METRICS_ENV

log = logging.getLogger("serving.launcher")

PR_SET_PDEATHSIG = 1

# Log lines that name a failure, minus vLLM's shutdown noise (which follows any failure).
_ERROR_LINE = re.compile(r"(Error|Exception|error:|Killed|Traceback|failed)(?!.*EngineDeadError)")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port nobody listens on right now (someone may take it before we bind it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerSpec:
    """How to run a worker. `argv` has no port: each start appends `--port N`, with the
    configured `port` if there is one, else a fresh free port, so a port taken between
    choosing it and binding it costs one retry rather than every retry.

    `keep_port`: restarts reuse the port of the first healthy start. Replicas in a chat pool
    need it, because the pool router was given their URLs when it started (see
    `serving.launcher.pools`)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None
    startup_timeout_s: float = 900.0
    health_path: str = "/health"
    host: str = "127.0.0.1"  # where the supervisor checks its health
    worker: str = ""  # the config's worker this process serves (a replica's, a pool's); "": name
    keep_port: bool = False

    def __post_init__(self) -> None:
        self.worker = self.worker or self.name

    def command(self, port: int) -> list[str]:
        return [*self.argv, "--port", str(port)]


def worker_env(env: dict[str, str], gpus: list[int] | None) -> dict[str, str]:
    """A worker's extra environment: its own settings, and the GPUs it may see."""
    out = dict(env)
    if gpus is not None:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return out


class State(enum.StrEnum):
    starting = "starting"
    up = "up"
    down = "down"
    stopped = "stopped"


class WorkerFailed(Exception):
    """A worker could not start; the message carries the end of its log."""


@dataclass
class Supervisor:
    spec: WorkerSpec
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # A worker that stayed up this long before crashing restarts without waiting.
    stable_after_s: float = 60.0
    state: State = State.stopped
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None
    _stopping: bool = False
    _monitor: asyncio.Task | None = None
    startup_attempts: int = 3
    _tail: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    port: int | None = None  # where the current (or last) process listens
    _kept_port: int | None = None  # with spec.keep_port: every restart's port
    # Called with the worker's URL each time a (re)started worker is healthy: a restart may
    # have moved it to another port, and the router's client and the runtime file follow.
    on_up: list[Callable[[str], None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        assert self.port is not None, "the worker has not been started"
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "::", "") else self.spec.host
        return f"http://{host}:{self.port}"

    def _became_healthy(self) -> None:
        self.state = State.up
        if self.spec.keep_port:
            self._kept_port = self.port
        for callback in self.on_up:
            callback(self.url)

    async def _spawn(self) -> asyncio.subprocess.Process:
        # The routers' shared metrics folder goes only to the processes given it: a vLLM
        # worker that inherited it would write its own metrics there.
        inherited = {k: v for k, v in os.environ.items() if k != SHARED_METRICS_ENV}
        env = {**inherited, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        self._tail.clear()
        self.port = self.spec.port or self._kept_port or free_port()
        self.process = await asyncio.create_subprocess_exec(
            *self.spec.command(self.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: stop() signals the whole tree
            preexec_fn=_die_with_parent,
        )
        log.info("%s: started pid %d on port %d", self.name, self.process.pid, self.port)
        return self.process

    async def _pump_logs(self, process: asyncio.subprocess.Process) -> None:
        """Copy the worker's output to ours, each line prefixed with the worker's name."""
        assert process.stdout is not None
        prefix = f"{self.name} | ".encode()
        out = sys.stdout.buffer
        while line := await process.stdout.readline():
            self._tail.append(line.decode(errors="replace").rstrip())
            out.write(prefix + line)
            out.flush()

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.spec.startup_timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if process.returncode is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.spec.health_path)).status_code == 200:
                        return True
                await asyncio.sleep(0.5)
        log.error("%s: not healthy after %.0f s", self.name, self.spec.startup_timeout_s)
        return False

    async def start(self) -> None:
        """Start the worker and wait until it is healthy; raise if it cannot get there.

        A worker that dies while starting is tried again, as a crash later would be: a
        transient failure (a port taken in the meantime, a slow disk) should not keep the whole
        stack down. One that keeps dying, or never answers its health check, raises.
        """
        for attempt in range(1, self.startup_attempts + 1):
            process = await self._spawn()
            self.state = State.starting
            pump = asyncio.create_task(self._pump_logs(process))
            if await self._wait_healthy(process):
                self._became_healthy()
                self._monitor = asyncio.create_task(self._watch(process, pump))
                return
            hung = process.returncode is None
            await self._terminate(process)
            await pump
            self.state = State.down
            if hung or attempt == self.startup_attempts:
                raise WorkerFailed(
                    f"worker '{self.name}' failed to start (exit code {process.returncode}, "
                    f"attempt {attempt}); {self._diagnosis()}")
            log.error("%s: exited with code %s while starting (attempt %d of %d); trying "
                      "again; %s", self.name, process.returncode, attempt,
                      self.startup_attempts, self._diagnosis())
            await asyncio.sleep(self.backoff_initial_s * attempt)

    def _diagnosis(self) -> str:
        """The first error lines of the worker's log, then its last lines: the root cause of
        a failed start is usually far above the shutdown noise at the end."""
        lines = list(self._tail)
        errors = [line for line in lines if _ERROR_LINE.search(line)][:8]
        last = lines[-12:]
        show = [*errors, "...", *last] if errors else last
        return "its log says:\n" + "\n".join(f"    {line[:300]}" for line in show)

    async def _watch(self, process: asyncio.subprocess.Process, pump: asyncio.Task) -> None:
        """Restart the worker with exponential backoff whenever it dies, until stopped."""
        backoff = self.backoff_initial_s
        while True:
            up_since = time.monotonic()
            await process.wait()
            with contextlib.suppress(ProcessLookupError):  # what the dead leader left behind
                os.killpg(process.pid, signal.SIGKILL)
            await pump
            if self._stopping:
                return
            self.state = State.down
            if time.monotonic() - up_since > self.stable_after_s:
                backoff = self.backoff_initial_s
            log.error("%s: exited with code %s; restarting in %.0f s",
                      self.name, process.returncode, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
            if self._stopping:
                return
            process = await self._spawn()
            self.state = State.starting
            self.restarts += 1
            pump = asyncio.create_task(self._pump_logs(process))
            if await self._wait_healthy(process):
                self._became_healthy()
                log.info("%s: healthy again after restart %d at %s", self.name, self.restarts,
                         self.url)
            else:
                await self._terminate(process)

    async def _terminate(self, process: asyncio.subprocess.Process, grace_s: float = 15.0) -> None:
        """SIGTERM the worker's process group, then SIGKILL whatever is left after `grace_s`."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                log.warning("%s: did not stop in %.0f s; killing", self.name, grace_s)
        # The leader may be gone while its children linger in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.process is not None:
            await self._terminate(self.process)
        self.state = State.stopped
