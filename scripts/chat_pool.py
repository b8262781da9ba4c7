"""A chat pool for benchmarks: local vLLM CPU replicas and a pool router in front of them.

The replicas and the pool router run the command lines `serving up` builds for a chat worker
with `replicas` (`serving.launcher.vllm.vllm_worker`, `serving.launcher.pools`: each replica
on its own cores, the render endpoints on, health checks that drop a dead replica at its first
failed check), but as plain processes, without the supervisor that would restart a replica:
the bench kills one on purpose. Each runs in its own process group, so that stopping or
killing one takes vLLM's engine-core child with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.config import Config
from serving.config.deployment import Routing
from serving.launcher.pools import PoolRouterSpec, pool_router_argv, replica_name
from serving.launcher.supervisor import free_port
from serving.launcher.vllm import vllm_worker
from serving.weights.prepare import prepare_model


@dataclass
class Proc:
    """A child in its own process group, with its log file."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path
    argv: list[str]
    env: dict[str, str]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the group, SIGKILL if it lingers; waits for the leader."""
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(10)
        self.signal_group(signal.SIGKILL)  # vLLM's engine core, should it outlive the leader


def spawn(name: str, argv: list[str], env: dict[str, str], url: str, log: Path) -> Proc:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, process, url, log, argv, env)


def restart(proc: Proc) -> Proc:
    """The same command again, on the same port, once `proc` is gone; waits until healthy."""
    proc.stop()
    new = spawn(proc.name, proc.argv, proc.env, proc.url, proc.log)
    wait_healthy([new])
    return new


def wait_healthy(procs: list[Proc], path: str = "/health", timeout_s: float = 600) -> None:
    """Until every process answers `path` with 200; a process that exits fails at once."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending:
        for proc in list(pending):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.process.returncode}):\n"
                                   + proc.log.read_text(errors="replace")[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(proc.url + path, timeout=2).status_code == 200:
                    pending.remove(proc)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {timeout_s:.0f} s: "
                               + ", ".join(p.name for p in pending))
        time.sleep(0.5)


def start_replicas(config: Config, worker: str, count: int, workdir: Path,
                   ) -> tuple[list[Proc], Path]:
    """`count` replicas of the chat worker `worker`, as `serving up` starts them with
    `replicas: count` (their own cores, the render endpoints on); returns them and the model
    folder (whose tokenizer smg may read)."""
    spec = config.workers[worker].model_copy(update={"replicas": count})
    assert spec.entry is not None
    model_path = prepare_model(spec.entry, config.cache_dir, getattr(spec.args, "dtype", "auto"))
    procs = []
    for i in range(count):
        replica = vllm_worker(replica_name(worker, i, count), spec, config, model_path, i)
        env = dict(replica.env)
        for var, sub in [("VLLM_CACHE_ROOT", "vllm"), ("VLLM_RPC_BASE_PATH", f"rpc{i}"),
                         ("TORCHINDUCTOR_CACHE_DIR", "inductor")]:
            (workdir / sub).mkdir(parents=True, exist_ok=True)
            env.setdefault(var, str(workdir / sub))
        port = free_port()
        procs.append(spawn(f"replica{i}", replica.command(port), env,
                           f"http://127.0.0.1:{port}", workdir / f"replica{i}.log"))
    try:
        wait_healthy(procs)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs, model_path


def router_argv(routing: Routing, workers: list[str], port: int,
                tokenizer: Path | None = None, breaker: int | None = None) -> list[str]:
    """The launcher's pool router command for `routing` (`routing.engine`) in front of
    `workers`, plus what the bench may add: smg's tokenizer (the model folder; without it smg
    matches prefixes on text) and the circuit breaker's failure count."""
    extra = []
    if routing.engine == "smg" and tokenizer is not None:
        extra += ["--model-path", str(tokenizer)]
    if breaker is not None:
        extra += ["--cb-failure-threshold", str(breaker)]
    spec = PoolRouterSpec(name="pool-router", argv=[*pool_router_argv(routing, 60), *extra],
                          env={}, members=lambda: workers)
    return spec.command(port)


def start_router(routing: Routing, replicas: list[Proc], workdir: Path,
                 tokenizer: Path | None = None, breaker: int | None = None) -> Proc:
    port = free_port()
    argv = router_argv(routing, [r.url for r in replicas], port, tokenizer, breaker)
    tag = f"{routing.engine}-{routing.policy}"
    proc = spawn(tag, argv, {}, f"http://127.0.0.1:{port}", workdir / f"router-{tag}.log")
    try:
        wait_healthy([proc], path="/liveness", timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    return proc
