"""Serving the router app: one process or several on one port, beside `serving up`'s workers
or alone (`serving router`) in front of workers that run elsewhere.

Several router processes share one port with SO_REUSEPORT: each binds its own socket and the
kernel spreads new connections across them, so no process accepts for the others and a dead
one takes only its own connections with it. Process 0 is the caller; the others are
`serving router` children, supervised (restarted when they die) like workers.

A router that did not start the workers learns where they are from `workers.NAME.endpoints` or
from the runtime file of a running `serving up` (`--workers-from`), which it re-reads when it
changes: a worker restarted on another port is followed within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from serving.config import Config, ConfigError
from serving.launcher.pools import has_pool_router
from serving.launcher.supervisor import Supervisor, WorkerSpec
from serving.router.admin import metrics_only_app
from serving.router.dependencies import services_of
from serving.router.metrics import SHARED_METRICS_ENV
from serving.router.workers import Endpoints

log = logging.getLogger("serving.launcher")

FOLLOW_INTERVAL_S = 1.0


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket of one router process. With `reuse_port`, other processes may bind
    the same address (each gets its own share of the connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def router_servers(app: FastAPI, config: Config, metrics_port: bool = True
                   ) -> tuple[uvicorn.Server, uvicorn.Server | None]:
    """The API server and, with `router.metrics_port` (and `metrics_port`: router process 0
    serves it, for all of them), the key-less metrics server."""
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False,
        timeout_graceful_shutdown=config.router.shutdown_grace_s))
    metrics = None
    if config.router.metrics_port is not None and metrics_port:
        metrics = uvicorn.Server(uvicorn.Config(
            metrics_only_app(app), host=config.router.host, port=config.router.metrics_port,
            log_config=None, access_log=False, server_header=False))
    return server, metrics


async def serve(app: FastAPI, config: Config, sock: socket.socket,
                on_started=None, metrics_port: bool = True) -> uvicorn.Server:
    """Serve `app` on `sock` until SIGINT/SIGTERM; `on_started()` runs once it listens."""
    server, metrics = router_servers(app, config, metrics_port)
    # Started first so the API server's signal handling is outermost: a SIGTERM drains the
    # API, then stops the metrics port (uvicorn hands the signal on when it returns).
    metrics_task = metrics and asyncio.create_task(metrics.serve())
    announce = asyncio.create_task(_when_started(server, on_started))
    try:
        await server.serve(sockets=[sock])
    finally:
        announce.cancel()
        if metrics is not None and metrics_task is not None:
            metrics.should_exit = True
            await metrics_task
    return server


async def _when_started(server: uvicorn.Server, on_started) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    if on_started is not None:
        on_started()


def extra_router_specs(config_files: list[Path], runtime_file: Path | None, host: str,
                       port: int, count: int, metrics_folder: Path) -> list[WorkerSpec]:
    """Router processes 1..count-1, as `serving router` children on the same port, keeping
    their metrics with process 0's in `metrics_folder` (from `share_metrics`)."""
    env = {SHARED_METRICS_ENV: str(metrics_folder)}
    argv = [sys.executable, "-m", "serving.cli", "router", "--host", host, "--reuse-port",
            "--single-process"]
    for path in config_files:
        argv += ["-c", str(path)]
    if runtime_file is not None:
        argv += ["--workers-from", str(runtime_file)]
    # The supervisor appends `--port PORT`: every child binds the router's own port.
    return [WorkerSpec(name=f"router/{i}", argv=argv, env=env, port=port, startup_timeout_s=120,
                       host=host) for i in range(1, count)]


def read_runtime_workers(path: Path) -> dict[str, Endpoints]:
    """Where each worker of a running `serving up --runtime-file` is: its replicas, and a
    chat pool's router (`url` is the pool router when the worker has replicas)."""
    try:
        info = json.loads(path.read_text())
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
        return out
    except FileNotFoundError:
        raise ConfigError(f"--workers-from {path}: no such file (is `serving up "
                          "--runtime-file` running?)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--workers-from {path}: not a runtime file: {e}") from None


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


async def follow_runtime_file(app: FastAPI, path: Path) -> None:
    """Point the router at workers that `serving up` restarted on other ports."""
    last = None
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL_S)
        with contextlib.suppress(OSError):
            stamp = path.stat().st_mtime_ns
            if stamp == last:
                continue
            last = stamp
            try:
                urls = read_runtime_workers(path)
            except ConfigError:
                continue  # being rewritten; the next look finds it whole
            for name, worker in services_of(app).workers.items():
                if name in urls:
                    worker.follow(urls[name])


async def start_extra_routers(specs: list[WorkerSpec], out: list[Supervisor]) -> None:
    """Start the extra router processes one by one, each supervised (in `out`, which the
    caller stops) from its start on."""
    for spec in specs:
        router = Supervisor(spec)
        out.append(router)
        await router.start()
