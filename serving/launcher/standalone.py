"""`serving router` and `serving worker`: one part of the stack per process, as a cluster runs
it (a router Deployment in front of worker Deployments), or a second router beside
`serving up`."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

from serving.config import Config, ConfigError
from serving.launcher.router_process import (
    bind,
    extra_router_specs,
    follow_runtime_file,
    serve,
    start_extra_routers,
    worker_urls,
)
from serving.launcher.supervisor import Supervisor
from serving.router.app import create_app
from serving.router.keys import UnresolvedKey
from serving.router.metrics import share_metrics
from serving.weights.prepare import chat_template_path, prepare_model

log = logging.getLogger("serving.launcher")


def _run(coro) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_router(config: Config, config_files: tuple[Path, ...], host: str, port: int,
               workers_from: Path | None, *, reuse_port: bool = False,
               single_process: bool = False) -> int:
    """Serve only the router. With `router.processes` > 1 (and not `single_process`, which
    the extra processes themselves get), the others are started as children on the port."""
    from serving.launcher.stack import resolve_keys

    try:
        keys = resolve_keys(config)
    except UnresolvedKey as e:
        log.error("%s", e)
        return 2
    urls = worker_urls(config, workers_from)
    processes = 1 if single_process else config.router.processes
    metrics_folder = share_metrics() if processes > 1 else None  # before any metric exists

    def on_signal(signum: int, _frame) -> None:
        # uvicorn handles signals while it serves and hands them here when it returns.
        log.info("received %s; stopped", signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    async def main() -> int:
        app = create_app(config, urls, keys)
        try:
            sock = bind(host, port, reuse_port=reuse_port or processes > 1)
        except OSError as e:
            log.error("cannot listen on %s:%s: %s", host, port, e.strerror)
            return 1
        bound = sock.getsockname()[1]
        routers: list[Supervisor] = []
        tasks: list[asyncio.Task] = []
        if workers_from is not None:
            tasks.append(asyncio.create_task(follow_runtime_file(app, workers_from)))

        def started() -> None:
            if metrics_folder is not None:
                specs = extra_router_specs(list(config_files), workers_from, host, bound,
                                           processes, metrics_folder)
                tasks.append(asyncio.create_task(start_extra_routers(specs, routers)))
            print(f"serving: router ready on http://{host}:{bound}/v1", flush=True)

        # The extra processes leave the metrics port to process 0, which answers for all.
        server = await serve(app, config, sock, started, metrics_port=not single_process)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(r.stop() for r in routers))
        return 0 if server.started else 1

    try:
        return _run(main())
    finally:
        if metrics_folder is not None:
            shutil.rmtree(metrics_folder, ignore_errors=True)


def run_worker(config: Config, name: str, host: str, port: int) -> int:
    """Prepare one worker's model and become that worker (exec: signals reach it directly)."""
    from serving.launcher.stack import WORKER_BUILDERS

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
