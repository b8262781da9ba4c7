"""A chat pool for benchmarks: local vLLM CPU replicas and a pool router in front of them.

The replicas run the exact command line `serving up` builds for the chat worker
(`serving.launcher.vllm.vllm_worker`), each in its own process group so that stopping or
killing one takes vLLM's engine-core child with it. vLLM's CPU backend pins its engine to one
core, and two replicas left alone both land on core 0; so replica i is bound to core i
(`VLLM_CPU_OMP_THREADS_BIND`), with no core held back.

The pool router is vllm-router or smg, started from a `Routing` config (the same fields
`workers.chat.routing` has), with its health checks on so a dead replica leaves the pool.
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


# vllm-router's cache_aware tokenises each prompt through the workers'
# `POST /v1/chat/completions/render`, which vLLM 0.32 answers with a 403 ("Scale-out endpoints
# are disabled") unless started with this flag; the router then sends everything to the first
# worker. (It also opens `/inference/v1/generate`, tokens in and out, on the replica's port.)
RENDER_FLAGS = ("--enable-scale-out",)


def start_replicas(config: Config, worker: str, count: int, workdir: Path,
                   ) -> tuple[list[Proc], Path]:
    """`count` replicas of the chat worker `worker`, replica i on core i % cores, with the
    render endpoints on; returns them and the model folder (whose tokenizer smg reads)."""
    spec = config.workers[worker]
    assert spec.entry is not None
    model_path = prepare_model(spec.entry, config.cache_dir, getattr(spec.args, "dtype", "auto"))
    base = vllm_worker(worker, spec, config, model_path)
    base.argv += RENDER_FLAGS
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(count):
        port = free_port()
        env = {**base.env, "VLLM_CPU_OMP_THREADS_BIND": str(cores[i % len(cores)]),
               "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        for var, sub in [("VLLM_CACHE_ROOT", "vllm"), ("VLLM_RPC_BASE_PATH", f"rpc{i}"),
                         ("TORCHINDUCTOR_CACHE_DIR", "inductor")]:
            (workdir / sub).mkdir(parents=True, exist_ok=True)
            env.setdefault(var, str(workdir / sub))
        procs.append(spawn(f"replica{i}", base.command(port), env,
                           f"http://127.0.0.1:{port}", workdir / f"replica{i}.log"))
    try:
        wait_healthy(procs)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs, model_path


def router_argv(engine: str, routing: Routing, workers: list[str], port: int,
                tokenizer: Path | None = None, breaker: int | None = None) -> list[str]:
    """The pool router's command line for `routing`, in front of `workers`.

    Both routers take the same policy and threshold flags; their health checks default to one
    a minute, far too slow for a replica that died, so the interval comes from the config.
    smg's cache_aware matches on tokens when it has a tokenizer (the model folder), else on
    text; vllm-router asks each worker to render the prompt instead.
    """
    binary = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parents[1] / ".venv")) / "bin"
    head = [str(binary / "vllm-router")] if engine == "vllm-router" else [
        str(binary / "smg"), "launch"]
    argv = [*head, "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *workers,
            "--policy", routing.policy,
            "--cache-threshold", str(routing.cache_threshold),
            "--balance-abs-threshold", str(routing.balance_abs_threshold),
            "--balance-rel-threshold", str(routing.balance_rel_threshold),
            "--health-check-interval-secs", str(max(1, round(routing.health_check_interval_s))),
            "--health-failure-threshold", "1",
            "--health-check-timeout-secs", "1",
            "--prometheus-port", str(free_port()),
            "--log-level", "warning" if engine == "vllm-router" else "warn"]
    if engine == "smg" and tokenizer is not None:
        argv += ["--model-path", str(tokenizer)]
    if breaker is not None:  # failures before a worker is skipped, health checks or not
        argv += ["--cb-failure-threshold", str(breaker)]
    return argv


def start_router(engine: str, routing: Routing, replicas: list[Proc], workdir: Path,
                 tokenizer: Path | None = None, breaker: int | None = None) -> Proc:
    port = free_port()
    argv = router_argv(engine, routing, [r.url for r in replicas], port, tokenizer, breaker)
    tag = f"{engine}-{routing.policy}"
    proc = spawn(tag, argv, {}, f"http://127.0.0.1:{port}", workdir / f"router-{tag}.log")
    try:
        wait_healthy([proc], timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    return proc
