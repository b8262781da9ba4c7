"""The runtime file of `serving up --runtime-file`: where the router and each worker listen.

`serving up` writes it once the router listens, and again whenever a worker restarts on
another port. Scripts and tests read it; a `serving router --workers-from FILE` beside the
stack (and the stack's own extra router processes) takes its workers' URLs from it and follows
it when a worker moves.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from serving.config import Config, ConfigError
from serving.launcher.pools import PoolRouterSpec, has_pool_router
from serving.launcher.supervisor import Supervisor
from serving.upstream.worker import Endpoints

log = logging.getLogger("serving.launcher")



@dataclass(frozen=True)
class StackInfo:
    """What the runtime file says of the stack itself."""

    router: str  # its URL
    control: str | None = None  # the launcher's own loopback URL (reloads go there)
    config: str = ""  # the digest of the config it serves


def write_runtime(runtime_file: Path, stack: StackInfo, supervisors: list[Supervisor]) -> None:
    """Where each worker listens, for scripts and tests. `url` and `pid` are what the router
    calls for the worker: its only process, a chat pool's router, or a media pool's first
    replica; a worker with several replicas also lists them all, by name. A chat pool's router
    also gives the URL of its Prometheus metrics (`metrics_url`), which the router merges.
    `config` changes when a reload applied an edited config, which tells the routers that
    follow the file to reload theirs."""
    workers: dict[str, dict] = {}
    for s in supervisors:
        here = {"name": s.name, "url": s.url, "pid": s.process.pid if s.process else None}
        info = workers.setdefault(s.spec.worker, {})
        if isinstance(s.spec, PoolRouterSpec):
            info.update(url=here["url"], pid=here["pid"], metrics_url=s.spec.metrics_url)
        elif "url" not in info:
            info.update(url=here["url"], pid=here["pid"])
        if s.name != s.spec.worker and not isinstance(s.spec, PoolRouterSpec):
            info.setdefault("replicas", []).append(here)
    info = {"router": stack.router, "control": stack.control, "config": stack.config,
            "pid": os.getpid(), "workers": workers}
    tmp = runtime_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(runtime_file)


def read_runtime(path: Path) -> tuple[StackInfo, dict[str, Endpoints]]:
    """The stack, and where each of its workers is: its replicas, and a chat pool's router
    (`url` is the pool router when the worker has replicas)."""
    try:
        info = json.loads(path.read_text())
        stack = StackInfo(info["router"], info.get("control"), info.get("config", ""))
        out = {}
        for name, worker in info["workers"].items():
            replicas = tuple(r["url"] for r in worker.get("replicas", ()))
            if not replicas:
                out[name] = Endpoints((worker["url"],))
            elif worker["url"] in replicas:  # a media pool: the router spreads it
                out[name] = Endpoints(replicas)
            else:
                out[name] = Endpoints(replicas, gateway=worker["url"],
                                      gateway_metrics=worker.get("metrics_url"))
        return stack, out
    except FileNotFoundError:
        raise ConfigError(f"--workers-from {path}: no such file (is `serving up "
                          "--runtime-file` running?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--workers-from {path}: not a runtime file: {e}") from None


def read_runtime_workers(path: Path) -> dict[str, Endpoints]:
    return read_runtime(path)[1]


def worker_urls(config: Config, runtime_file: Path | None) -> dict[str, Endpoints]:
    """Where each configured worker is: its `endpoints`, else the runtime file's entry.

    A chat worker with several endpoints needs a cache-aware pool router in front of them,
    which `serving router` does not start (each router replica would keep its own view of
    the replicas' caches): run one (vllm-router, as the Helm chart does) and give its URL as
    the worker's one endpoint."""
    from_file = read_runtime_workers(runtime_file) if runtime_file is not None else {}
    urls: dict[str, Endpoints] = {}
    for name, worker in config.workers.items():
        if worker.endpoints:
            if len(worker.endpoints) > 1 and has_pool_router(worker):
                raise ConfigError(
                    f"workers.{name}.endpoints: a chat pool's replicas are reached through "
                    "one cache-aware router, which `serving router` does not start: run it "
                    "(vllm-router --worker-urls ...) and give its URL as the only endpoint")
            urls[name] = Endpoints(tuple(u.rstrip("/") for u in worker.endpoints))
        elif name in from_file:
            urls[name] = from_file[name]
        else:
            raise ConfigError(
                f"workers.{name}: `serving router` starts no worker: give its URL in "
                f"workers.{name}.endpoints, or run beside `serving up --runtime-file FILE` "
                "with --workers-from FILE")
    return urls
