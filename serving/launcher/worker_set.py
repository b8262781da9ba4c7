"""The processes a config asks for, and where the router reaches each worker.

From a config, `worker_specs` gives every process `serving up` runs besides the router: each
worker's local replicas (built per engine by `WORKER_BUILDERS`) and each chat pool's router.
`worker_endpoints` gives the router its view of the same set: each worker's replica URLs, and
a chat pool's router. This is the one place a config becomes processes; `serving worker` and a
reload build theirs here too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serving.config import Config
from serving.launcher.media import media_worker
from serving.launcher.pools import (
    WorkerBuilder,
    has_pool_router,
    pool_router_name,
    pool_router_spec,
    replica_name,
    replica_specs,
)
from serving.launcher.supervisor import WorkerSpec
from serving.launcher.vllm import vllm_worker
from serving.upstream.worker import Endpoints

WORKER_BUILDERS: dict[str, WorkerBuilder] = {
    "vllm": vllm_worker, "diffusers": media_worker, "faster-whisper": media_worker,
    "hibari": media_worker, "kokoro": media_worker}


def _not_started(name: str) -> str:
    raise RuntimeError(f"{name} has not been started")


def worker_specs(config: Config, model_paths: dict[str, Path],
                 url_of: Callable[[str], str] = _not_started) -> list[WorkerSpec]:
    """Every process `serving up` runs besides the router: each worker's local replicas, and
    each chat pool's router, whose members `url_of` (a process name -> its URL) finds when the
    pool router starts."""
    specs: list[WorkerSpec] = []
    for name, worker in config.workers.items():
        assert worker.entry is not None
        replicas = replica_specs(name, worker, config, model_paths[name],
                                 WORKER_BUILDERS[worker.entry.engine])
        specs += replicas
        if has_pool_router(worker):
            names = [spec.name for spec in replicas]
            specs.append(pool_router_spec(
                name, worker,
                (lambda names=names: [url_of(n) for n in names]) if names
                else (lambda urls=list(worker.endpoints): urls)))
    return specs


def worker_endpoints(config: Config, url_of: Callable[[str], str],
                     metrics_of: Callable[[str], str | None] = lambda _: None
                     ) -> dict[str, Endpoints]:
    """Where the router reaches each worker: its replicas (local: `url_of` their process
    names; or its `endpoints`), and a chat pool's router with its metrics (`metrics_of`)."""
    out = {}
    for name, worker in config.workers.items():
        replicas = list(worker.endpoints) or [
            url_of(replica_name(name, i, worker.replicas)) for i in range(worker.replicas)]
        if has_pool_router(worker):
            router = pool_router_name(name)
            out[name] = Endpoints(tuple(replicas), url_of(router), metrics_of(router))
        else:
            out[name] = Endpoints(tuple(replicas))
    return out
