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

import httpx

from serving.launcher.supervisor import free_port


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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


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
    """A second router process over the workers of a running stack."""

    process: subprocess.Popen
    base_url: str
    log: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode

    def kill(self) -> None:
        """As a crash would: SIGKILL, no clean-up."""
        self.process.kill()
        self.process.wait()


# Until `serving router -c ... --workers-from RUNTIME_FILE` exists: the same app, built the way
# `serving up` builds it, served by uvicorn.
_ROUTER_MAIN = """
import json, sys
from pathlib import Path
import uvicorn
from serving.cli import setup_logging
from serving.config import load_config
from serving.launcher.stack import resolve_keys
from serving.router.app import create_app
port, runtime, configs = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
config = load_config([Path(c) for c in configs])
setup_logging(config.router.log_level)
workers = json.loads(runtime.read_text())["workers"]
app = create_app(config, {name: w["url"] for name, w in workers.items()}, resolve_keys(config))
uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
            timeout_graceful_shutdown=config.router.shutdown_grace_s)
"""


def start_router(stack: BackgroundStack, configs: list[Path], workdir: Path,
                 timeout_s: float = 120, env: dict[str, str] | None = None) -> BackgroundRouter:
    """Another router over `stack`'s workers, with the same keys and its own state folder;
    logs go to workdir/router.log. It shares jobs with the stack only through the stores the
    configs name (`router.database`, `router.artifacts`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    runtime = workdir / "workers.json"
    runtime.write_text(json.dumps(stack.runtime))
    port = free_port()
    cmd = [sys.executable, "-c", _ROUTER_MAIN, str(port), str(runtime), *map(str, configs)]
    full_env = {**os.environ, "SERVING_API_KEYS": f"{stack.key},{stack.other_key}",
                "SERVING_ADMIN_KEYS": stack.admin_key,
                "SERVING_STATE_DIR": str(workdir / "state"), **(env or {})}
    log = workdir / "router.log"
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                return BackgroundRouter(process, base_url, log)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"router did not start (exit {process.returncode}):\n"
                               + log.read_text(errors="replace")[-4000:])
        time.sleep(0.2)
