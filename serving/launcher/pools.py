"""Replicas of a worker, and the router in front of a chat pool.

A worker with `replicas: N` runs as N processes, `NAME/0` ... `NAME/N-1`, each on its own port
with its own share of the worker's `gpus` (and on CPU, for vLLM, its own cores). A worker with
`endpoints` runs elsewhere and starts nothing here.

Chat (vLLM) pools are reached through an existing cache-aware router (`routing.engine`:
vllm-router or smg), one per pool, named `NAME/router` and supervised like a worker: it sends a
prompt to the replica that holds its prefix in its KV cache, which a plain balancer cannot know.
Media pools need no such process: the router spreads them itself (`serving.upstream.worker`).

Replica ports stay put. A pool router is given its replicas' URLs when it starts, so a replica
that crashes is restarted on the port it had (`WorkerSpec.keep_port`): the pool router's
health checks take it out while it is down and back in when it answers again, and nothing has
to tell the pool router about a move. This is the simplest scheme that works the same for both
router engines (each has its own API for changing its member list) and across a restart of the
pool router itself. Its one risk, another process taking the port in the second between, makes
that replica's restarts fail (logged, retried with backoff) while the others keep serving.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import Config, WorkerConfig
from serving.config.deployment import Routing
from serving.launcher.supervisor import WorkerSpec, free_port


def replica_name(worker: str, index: int, replicas: int) -> str:
    """`chat` for a worker's only replica (as before replicas existed), else `chat/0`..."""
    return worker if replicas == 1 else f"{worker}/{index}"


def pool_router_name(worker: str) -> str:
    return f"{worker}/router"


def pool_size(worker: WorkerConfig) -> int:
    """How many replicas serve the worker: its endpoints elsewhere, or those started here."""
    return len(worker.endpoints) or worker.replicas


def has_pool_router(worker: WorkerConfig) -> bool:
    """A chat worker with several replicas is reached through a cache-aware pool router."""
    return (worker.entry is not None and worker.entry.engine == "vllm"
            and pool_size(worker) > 1)


@dataclass
class PoolRouterSpec(WorkerSpec):
    """The pool router's command. Its replicas' URLs are read at each start (`members`): local
    replicas get their ports when they first start, which is before their pool router."""

    members: Callable[[], list[str]] = field(default=list)
    # Both engines serve Prometheus metrics on a port of their own, 29000 unless told: a free
    # one, so that two pools (or two stacks) on a node do not collide; kept across restarts,
    # since the router merges what it serves into its own /metrics.
    metrics_port: int = field(default_factory=free_port)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, port: int) -> list[str]:
        return [*self.argv, "--port", str(port), "--prometheus-host", "127.0.0.1",
                "--prometheus-port", str(self.metrics_port), "--worker-urls", *self.members()]


def _binary(name: str) -> str:
    """The router binary installed beside this Python (the virtualenv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def pool_router_argv(routing: Routing, startup_timeout_s: float) -> list[str]:
    """The pool router's command without its port and members. Both engines take the same
    policy and balance flags; health checks count whole seconds, at least one."""
    head = ([_binary("vllm-router")] if routing.engine == "vllm-router"
            else [_binary("smg"), "launch"])
    return [
        *head,
        "--host", "127.0.0.1",
        "--policy", routing.policy,
        "--cache-threshold", str(routing.cache_threshold),
        "--balance-abs-threshold", str(routing.balance_abs_threshold),
        "--balance-rel-threshold", str(routing.balance_rel_threshold),
        "--health-check-interval-secs", str(max(1, math.ceil(routing.health_check_interval_s))),
        # A dead replica leaves the pool after one failed check, and a restarted one is back
        # after one good one: the supervisor restarts replicas, and the router's own view of
        # each replica is what /ready shows.
        "--health-failure-threshold", "1",
        "--health-success-threshold", "1",
        # At start the pool router waits for its replicas (local ones are healthy already);
        # remote endpoints get as long as a worker gets to start.
        "--worker-startup-timeout-secs", str(math.ceil(startup_timeout_s)),
        "--worker-startup-check-interval", "1",
        "--log-level", "warning" if routing.engine == "vllm-router" else "warn",
    ]


def pool_router_spec(name: str, worker: WorkerConfig, members: Callable[[], list[str]]
                     ) -> PoolRouterSpec:
    return PoolRouterSpec(
        name=pool_router_name(name),
        argv=pool_router_argv(worker.routing, worker.startup_timeout_s),
        env={},
        port=worker.routing.port,
        startup_timeout_s=worker.startup_timeout_s,
        # /health is 503 while any replica is down (vllm-router); the pool serves on the
        # others, so the process is alive as long as it answers /liveness.
        health_path="/liveness",
        worker=name,
        keep_port=True,  # the router's client for the worker keeps its URL
        members=members,
    )


WorkerBuilder = Callable[[str, WorkerConfig, Config, Path, int], WorkerSpec]


def replica_specs(name: str, worker: WorkerConfig, config: Config, model_path: Path,
                  build: WorkerBuilder) -> list[WorkerSpec]:
    """The local processes of one worker: none with `endpoints`, else one per replica."""
    if worker.endpoints:
        return []
    specs = []
    for index in range(worker.replicas):
        spec = build(replica_name(name, index, worker.replicas), worker, config, model_path,
                     index)
        spec.worker = name
        spec.keep_port = has_pool_router(worker)
        specs.append(spec)
    return specs
