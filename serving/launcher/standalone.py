"""`serving router` and `serving worker`: one part of the stack per process, as a cluster runs
it (a router Deployment in front of worker Deployments), or a second router beside
`serving up`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from serving.config import Config, ConfigError
from serving.launcher.router_process import RouterRun, run_loop, serve_router
from serving.launcher.router_reload import (
    ForwardingReloader,
    RouterReloader,
    follow_stack,
    watch_files,
)
from serving.launcher.runtime_file import worker_urls
from serving.launcher.worker_set import WORKER_BUILDERS
from serving.router import Services, UnresolvedKey, resolve_keys
from serving.weights.prepare import chat_template_path, prepare_model

log = logging.getLogger("serving.launcher")


def run_router(config: Config, config_files: tuple[Path, ...], host: str, port: int,
               workers_from: Path | None, *, reuse_port: bool = False,
               single_process: bool = False, watch_config: bool = False) -> int:
    """Serve only the router. With `router.processes` > 1 (and not `single_process`, which
    the extra processes themselves get), the others are started as children on the port.
    With `workers_from`, the workers' URLs come from that runtime file and follow it, and a
    reload is the stack's. `watch_config`: reload when the config files change."""
    try:
        keys = resolve_keys(config)
    except UnresolvedKey as e:
        log.error("%s", e)
        return 2
    endpoints = worker_urls(config, workers_from)

    def on_signal(signum: int, _frame) -> None:
        # uvicorn handles signals while it serves and hands them here when it returns.
        log.info("received %s; stopped", signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    background: list[asyncio.Task] = []

    def on_services(services: Services) -> None:
        own = RouterReloader(services, config_files, workers_from)
        services.reloader = own if workers_from is None else ForwardingReloader(workers_from)
        if workers_from is not None:
            background.append(asyncio.create_task(follow_stack(services, workers_from, own)))
        if watch_config:
            background.append(asyncio.create_task(watch_files(config_files, own)))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: background.append(
            loop.create_task(own.reload_logged())))

    async def main() -> int:
        try:
            return await serve_router(
                RouterRun(config, keys, host, port, config_files,
                          processes=1 if single_process else config.router.processes,
                          reuse_port=reuse_port, metrics_port=not single_process,
                          runtime_file=workers_from,
                          ready_message="serving: router ready on {url}/v1"),
                endpoints, on_services=on_services)
        finally:
            for task in background:
                task.cancel()

    return run_loop(main())


def run_worker(config: Config, name: str, host: str, port: int) -> int:
    """Prepare one worker's model and become that worker (exec: signals reach it directly)."""
    worker = config.workers.get(name)
    if worker is None:
        raise ConfigError(f"workers.{name}: no such worker (the config has: "
                          f"{', '.join(config.workers)})")
    assert worker.entry is not None and worker.args is not None
    chat_template_path(worker.entry)
    path = prepare_model(worker.entry, config.cache_dir, getattr(worker.args, "dtype", "auto"))
    spec = WORKER_BUILDERS[worker.entry.engine](name, worker, config, path)
    argv = [*spec.command(port), "--host", host]
    log.info("worker %s: %s", name, " ".join(argv))
    os.execvpe(argv[0], argv, {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"})
    return 1  # not reached
