"""The one way a router process serves, for `serving up` and `serving router` alike.

`serve_router` takes the same named steps for both: share metrics (with several processes),
build the router's services, build the app, bind the port, serve until SIGINT/SIGTERM, and
once it listens start the extra router processes. The two commands differ only in where the
workers are (`serving up` started them; `serving router` reads their URLs) and in what they do
once the services exist (`on_services`) and once the port listens (`on_listening`).

Several router processes share one port with SO_REUSEPORT: each binds its own socket and the
kernel spreads new connections across them, so no process accepts for the others and a dead
one takes only its own connections with it. Process 0 is the caller; the others are
`serving router --single-process` children, supervised (restarted when they die) like
workers, that follow the stack's runtime file. They share their Prometheus metrics with
process 0 through a folder (`share_metrics`), and only process 0 serves `router.metrics_port`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from serving.config import Config
from serving.launcher.supervisor import Supervisor, WorkerSpec
from serving.router import (
    SHARED_METRICS_ENV,
    Principal,
    Services,
    build_app,
    build_services,
    metrics_only_app,
    share_metrics,
)
from serving.upstream.worker import Endpoints

log = logging.getLogger("serving.launcher")


@dataclass
class RouterRun:
    """How one router process serves."""

    config: Config
    keys: list[Principal]
    host: str
    port: int
    config_files: tuple[Path, ...] = ()  # what the extra processes load
    processes: int = 1  # this one and the extra ones it starts
    reuse_port: bool = False  # share the port with processes this one did not start
    metrics_port: bool = True  # serve `router.metrics_port` (process 0 does, for all)
    runtime_file: Path | None = None  # the workers' URLs, which the extra processes follow
    ready_message: str = "serving: ready on {url}/v1"
    # Also serve on a loopback port of its own (`control`), where the other router processes
    # reach this one (the launcher's) whatever the shared port's kernel spreading does.
    control: bool = False


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's main coroutine on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def serve_router(run: RouterRun, endpoints: Mapping[str, Endpoints], *,
                       on_services: Callable[[Services], None] | None = None,
                       on_listening: Callable[[str, str | None], None] | None = None) -> int:
    """Serve the router in this process until SIGINT/SIGTERM; 0 once it stopped cleanly.
    `on_listening(url, control_url)` runs once it listens."""
    folder = share_metrics() if run.processes > 1 else None  # before any metric exists
    routers: list[Supervisor] = []
    tasks: list[asyncio.Task] = []
    try:
        services = build_services(run.config, endpoints, run.keys,
                                  str(folder) if folder else os.environ.get(SHARED_METRICS_ENV))
        if on_services is not None:
            on_services(services)
        app = build_app(services)
        try:
            sock = bind(run.host, run.port, reuse_port=run.reuse_port or run.processes > 1)
        except OSError as e:
            log.error("cannot listen on %s:%s: %s", run.host, run.port, e.strerror)
            return 1
        url = f"http://{run.host}:{sock.getsockname()[1]}"
        sockets = [sock]
        if run.control:
            sockets.append(bind("127.0.0.1", 0, reuse_port=False))
        control = f"http://127.0.0.1:{sockets[-1].getsockname()[1]}" if run.control else None

        def listening() -> None:
            if on_listening is not None:
                on_listening(url, control)
            if folder is not None:
                others = extra_router_specs(run, sock.getsockname()[1], folder)
                tasks.append(asyncio.create_task(start_extra_routers(others, routers)))
            print(run.ready_message.format(url=url), flush=True)

        server = await serve(app, run.config, sockets, listening,
                             metrics_port=run.metrics_port)
        return 0 if server.started else 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.shield(asyncio.gather(*(r.stop() for r in routers)))
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


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


async def serve(app: FastAPI, config: Config, sockets: list[socket.socket],
                on_started: Callable[[], None] | None = None,
                metrics_port: bool = True) -> uvicorn.Server:
    """Serve `app` on `sockets` until SIGINT/SIGTERM; `on_started()` runs once it listens."""
    server, metrics = router_servers(app, config, metrics_port)
    # Started first so the API server's signal handling is outermost: a SIGTERM drains the
    # API, then stops the metrics port (uvicorn hands the signal on when it returns).
    metrics_task = metrics and asyncio.create_task(metrics.serve())
    announce = asyncio.create_task(_when_started(server, on_started))
    try:
        await server.serve(sockets=sockets)
    finally:
        announce.cancel()
        if metrics is not None and metrics_task is not None:
            metrics.should_exit = True
            await metrics_task
    return server


async def _when_started(server: uvicorn.Server, on_started: Callable[[], None] | None) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    if on_started is not None:
        on_started()


def extra_router_specs(run: RouterRun, port: int, metrics_folder: Path) -> list[WorkerSpec]:
    """Router processes 1..processes-1, as `serving router` children on the same port, keeping
    their metrics with process 0's in `metrics_folder` (from `share_metrics`)."""
    env = {SHARED_METRICS_ENV: str(metrics_folder)}
    argv = [sys.executable, "-m", "serving.cli", "router", "--host", run.host, "--reuse-port",
            "--single-process"]
    for path in run.config_files:
        argv += ["-c", str(path)]
    if run.runtime_file is not None:
        argv += ["--workers-from", str(run.runtime_file)]
    # The supervisor appends `--port PORT`: every child binds the router's own port.
    return [WorkerSpec(name=f"router/{i}", argv=argv, env=env, port=port, startup_timeout_s=120,
                       host=run.host) for i in range(1, run.processes)]


async def start_extra_routers(specs: list[WorkerSpec], out: list[Supervisor]) -> None:
    """Start the extra router processes one by one, each supervised (in `out`, which the
    caller stops) from its start on."""
    for spec in specs:
        router = Supervisor(spec)
        out.append(router)
        await router.start()
