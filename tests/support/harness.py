"""Run `serving up` as a background process and wait until it serves.

For the end-to-end tests and the benchmarks, which need the real stack (router plus workers)
as a user runs it, and need to know where its workers listen.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from serving.launcher.supervisor import free_port


def terminate(process: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM, then the exit code; a process that does not stop in time is killed (and the
    timeout raised)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return process.returncode


@dataclass
class BackgroundStack:
    process: subprocess.Popen
    base_url: str
    key: str
    other_key: str  # a second valid key, to check that keys cannot see each other's things
    admin_key: str  # may read /v1/usage and /metrics
    runtime: dict
    log: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def worker_url(self, name: str = "chat") -> str:
        return self.runtime["workers"][name]["url"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        return terminate(self.process, timeout_s)


def start_background_stack(
    configs: list[Path],
    workdir: Path,
    timeout_s: float = 600,
    env: dict[str, str] | None = None,
    key: str | None = None,
) -> BackgroundStack:
    """Start `serving up -c ...` on a free port with fresh keys (or `key`, to restart a stack as
    the same client); logs go to workdir/stack.log."""
    key = key or "sk-bg-" + secrets.token_hex(16)
    other_key = "sk-bg-" + secrets.token_hex(16)
    admin_key = "sk-bg-admin-" + secrets.token_hex(16)
    runtime_file = workdir / "runtime.json"
    runtime_file.unlink(missing_ok=True)
    log = workdir / "stack.log"
    cmd = [sys.executable, "-m", "serving.cli", "up", "--port", str(free_port()),
           "--runtime-file", str(runtime_file)]
    for config in configs:
        cmd += ["-c", str(config)]
    # Router state (video jobs, the usage ledger) in the work folder, not the user's home.
    full_env = {**os.environ, "SERVING_API_KEYS": f"{key},{other_key}",
                "SERVING_ADMIN_KEYS": admin_key, "SERVING_STATE_DIR": str(workdir / "state"),
                **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not runtime_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"stack did not start (exit {process.returncode}):\n"
                               + log.read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    runtime = json.loads(runtime_file.read_text())
    return BackgroundStack(process, runtime["router"], key, other_key, admin_key, runtime, log)


@dataclass
class BackgroundRouter:
    """A `serving router` process (no workers of its own)."""

    process: subprocess.Popen
    base_url: str
    log: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM; returns the exit code."""
        return terminate(self.process, timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crashed node would die: no shutdown code runs."""
        self.process.kill()
        self.process.wait()


def start_background_router(
    configs: list[Path],
    workdir: Path,
    stack: BackgroundStack | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> BackgroundRouter:
    """`serving router -c ...` on a free port. Beside `stack`, it takes the stack's workers
    (`--workers-from` its runtime file) and accepts the stack's keys; its own state goes to
    workdir/state unless `env` says otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "router.log"
    cmd = [sys.executable, "-m", "serving.cli", "router", "--port", str(port)]
    for config in configs:
        cmd += ["-c", str(config)]
    full_env = {**os.environ, "SERVING_STATE_DIR": str(workdir / "state")}
    if stack is not None:
        cmd += ["--workers-from", str(stack.log.parent / "runtime.json")]
        full_env |= {"SERVING_API_KEYS": f"{stack.key},{stack.other_key}",
                     "SERVING_ADMIN_KEYS": stack.admin_key}
    full_env |= env or {}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while "router ready on" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"router did not start (exit {process.returncode}):\n"
                               + log.read_text(errors="replace")[-4000:])
        time.sleep(0.2)
    return BackgroundRouter(process, base_url, log)
