"""The processes a config asks for, worker by worker, and where the router reaches each worker.

Each worker is one `WorkerGroup`: its local replicas (built per engine by `WORKER_BUILDERS`)
and, for a chat pool, its pool router. `worker_specs` and `worker_endpoints` are the same for
a whole config. This is the one place a config becomes processes: `serving up`, `serving
worker` and a reload (which compares a worker's specs before and after) all build them here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from serving.config import Config, WorkerConfig
from serving.launcher.media import media_worker
from serving.launcher.order import start_in_order
from serving.launcher.pools import (
    PoolRouterSpec,
    WorkerBuilder,
    has_pool_router,
    pool_router_name,
    pool_router_spec,
    replica_name,
    replica_specs,
)
from serving.launcher.supervisor import Supervisor, WorkerSpec
from serving.launcher.vllm import vllm_worker
from serving.upstream.worker import Endpoints

WORKER_BUILDERS: dict[str, WorkerBuilder] = {
    "vllm": vllm_worker, "diffusers": media_worker, "faster-whisper": media_worker,
    "hibari": media_worker, "kokoro": media_worker}


def _not_started(name: str) -> str:
    raise RuntimeError(f"{name} has not been started")


def group_specs(name: str, worker: WorkerConfig, config: Config, model_path: Path,
                url_of: Callable[[str], str] = _not_started) -> list[WorkerSpec]:
    """The processes of one worker: its local replicas, and a chat pool's router, whose
    members `url_of` (a process name -> its URL) finds when the pool router starts."""
    assert worker.entry is not None
    replicas = replica_specs(name, worker, config, model_path,
                             WORKER_BUILDERS[worker.entry.engine])
    if not has_pool_router(worker):
        return replicas
    names = [spec.name for spec in replicas]
    return [*replicas, pool_router_spec(
        name, worker, (lambda: [url_of(n) for n in names]) if names
        else (lambda urls=list(worker.endpoints): urls))]


def group_endpoints(name: str, worker: WorkerConfig, url_of: Callable[[str], str],
                    metrics_of: Callable[[str], str | None] = lambda _: None) -> Endpoints:
    """Where the router reaches a worker: its replicas (local: `url_of` their process names;
    or its `endpoints`), and a chat pool's router with its metrics (`metrics_of`)."""
    replicas = list(worker.endpoints) or [
        url_of(replica_name(name, i, worker.replicas)) for i in range(worker.replicas)]
    if has_pool_router(worker):
        router = pool_router_name(name)
        return Endpoints(tuple(replicas), url_of(router), metrics_of(router))
    return Endpoints(tuple(replicas))


def worker_specs(config: Config, model_paths: Mapping[str, Path],
                 url_of: Callable[[str], str] = _not_started) -> list[WorkerSpec]:
    """Every process `serving up` runs besides the router."""
    return [spec for name, worker in config.workers.items()
            for spec in group_specs(name, worker, config, model_paths[name], url_of)]


def worker_endpoints(config: Config, url_of: Callable[[str], str],
                     metrics_of: Callable[[str], str | None] = lambda _: None
                     ) -> dict[str, Endpoints]:
    """Where the router reaches each worker of `config`."""
    return {name: group_endpoints(name, worker, url_of, metrics_of)
            for name, worker in config.workers.items()}


def spec_key(spec: WorkerSpec) -> tuple:
    """What makes two specs the same process: its command and environment (and for a pool
    router its flags: its members and metrics port are its own)."""
    return (type(spec).__name__, tuple(spec.argv), tuple(sorted(spec.env.items())), spec.port,
            spec.health_path, spec.keep_port)


class WorkerGroup:
    """The processes of one worker, supervised together. `keep`: running supervisors of the
    same processes to take over (a pool scaled up or down keeps its other replicas)."""

    def __init__(self, name: str, worker: WorkerConfig, config: Config, model_path: Path,
                 keep: Iterable[Supervisor] = ()):
        self.name = name
        self.worker = worker
        self.model_path = model_path
        self.by_name: dict[str, Supervisor] = {}
        self.specs = group_specs(name, worker, config, model_path, self.url_of)
        kept = {s.name: s for s in keep}
        self.supervisors = [kept.get(spec.name) or Supervisor(spec) for spec in self.specs]
        self.by_name.update((s.name, s) for s in self.supervisors)
        self.started_s: float | None = None  # how long its last start took

    def url_of(self, process: str) -> str:
        return self.by_name[process].url

    def endpoints(self) -> Endpoints:
        return group_endpoints(self.name, self.worker, self.url_of,
                               lambda p: getattr(self.by_name[p].spec, "metrics_url", None))

    def same_processes(self, other: WorkerGroup) -> bool:
        return [spec_key(s) for s in self.specs] == [spec_key(s) for s in other.specs]

    def scales_to(self, other: WorkerGroup) -> bool:
        """Whether `other` is this worker with more or fewer replicas and otherwise the same
        processes: the replicas both have are kept, and so is a chat pool's router command
        (a new one is started for the new members)."""
        mine, theirs = self.replicas(), other.replicas()
        routers = [[spec_key(s.spec) for s in g.supervisors if s not in g.replicas()]
                   for g in (self, other)]
        return (len(mine) != len(theirs) and routers[0] == routers[1]
                and all(a.name == b.name and spec_key(a.spec) == spec_key(b.spec)
                        for a, b in zip(mine, theirs, strict=False)))

    def replicas(self) -> list[Supervisor]:
        return [s for s in self.supervisors if not isinstance(s.spec, PoolRouterSpec)]

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors))


async def start_groups(groups: Iterable[WorkerGroup], after: Mapping[str, set[str]]) -> None:
    """Start the processes of `groups` that never ran (a kept one runs already), each once
    those in `after[name]` are healthy (on a shared GPU, vLLM first; a pool router once its
    replicas are up); raise on the first failure."""
    groups = list(groups)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await start_in_order([s for g in groups for s in g.supervisors if s.process is None],
                         after)
    for group in groups:
        group.started_s = loop.time() - started
