"""`serving up`: prepare models, start the workers, wait for them, serve the router.

Everything runs in one asyncio loop: the router (uvicorn), the supervisors that restart crashed
workers, and the pumps that copy worker logs. Ctrl-C or SIGTERM at any point stops the router
and then every worker; nothing is left running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from serving.config import Config
from serving.launcher.media import media_worker
from serving.launcher.order import process_order, start_in_order
from serving.launcher.pools import (
    PoolRouterSpec,
    has_pool_router,
    pool_router_name,
    pool_router_spec,
    replica_name,
    replica_specs,
)
from serving.launcher.router_process import (
    bind,
    extra_router_specs,
    serve,
    start_extra_routers,
)
from serving.launcher.supervisor import Supervisor, WorkerFailed, WorkerSpec
from serving.launcher.vllm import vllm_worker
from serving.router.app import create_app
from serving.router.dependencies import services_of
from serving.router.keys import (
    Principal,
    UnresolvedKey,
    configured_keys,
    ensure_generated_key,
    principals,
)
from serving.router.metrics import share_metrics
from serving.router.workers import Endpoints
from serving.weights.prepare import prepare_all

log = logging.getLogger("serving.launcher")

WORKER_BUILDERS = {"vllm": vllm_worker, "diffusers": media_worker,
                   "faster-whisper": media_worker, "hibari": media_worker,
                   "kokoro": media_worker}


def _not_started(name: str) -> str:
    raise RuntimeError(f"{name} has not been started")


def resolve_keys(config: Config) -> list[Principal]:
    """Configured keys, or a generated one kept in a file only the user can read."""
    keys = configured_keys(config.router)
    if not keys:
        key, created = ensure_generated_key(config.router.generated_key_file)
        print(
            f"serving: no API key configured; {'generated' if created else 'using'} the key "
            f"in {config.router.generated_key_file} (readable only by you)",
            flush=True,
        )
        keys = [key]
    return principals(keys, config.router.default_limits)


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


async def run_stack(
    config: Config,
    model_paths: dict[str, Path],
    keys: list[Principal],
    host: str,
    port: int,
    runtime_file: Path | None = None,
    config_files: tuple[Path, ...] = (),
) -> int:
    """`config_files` are what `config` was loaded from: extra router processes load them."""
    loop = asyncio.get_running_loop()
    startup: asyncio.Task | None = None
    stop_requested = False

    def on_signal(signum: int, _frame) -> None:
        nonlocal stop_requested
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop_requested = True
        if startup is not None:
            loop.call_soon_threadsafe(startup.cancel)

    # Plain handlers rather than loop.add_signal_handler: uvicorn swaps them for its own while
    # it serves and hands any signal it caught back to them when it returns.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    supervisors: list[Supervisor] = []
    metrics_folder: Path | None = None
    try:
        by_name: dict[str, Supervisor] = {}
        specs = worker_specs(config, model_paths, lambda name: by_name[name].url)
        supervisors = [Supervisor(spec) for spec in specs]
        by_name.update((s.name, s) for s in supervisors)

        # On a shared GPU, vLLM first: it sizes itself from the memory it finds free. A pool
        # router starts once its replicas are up.
        startup = asyncio.create_task(start_in_order(supervisors, process_order(config, specs)))
        await startup
        startup = None

        if stop_requested:  # between the workers' start and the router's
            return 130
        processes = config.router.processes
        if processes > 1:  # before any metric exists
            metrics_folder = share_metrics()
        app = create_app(config, worker_endpoints(
            config, lambda name: by_name[name].url,
            lambda name: getattr(by_name[name].spec, "metrics_url", None)), keys)
        workers = services_of(app).workers
        for s in supervisors:  # a worker restarted on another port is reached there
            s.on_up.append(workers[s.spec.worker].member(s.name).move_to)
        if processes > 1 and runtime_file is None:
            # The other router processes follow the workers through this file.
            runtime_file = config.state_dir / f"runtime-{os.getpid()}.json"
        try:
            sock = bind(host, port, reuse_port=processes > 1)
        except OSError as e:
            log.error("cannot listen on %s:%s: %s", host, port, e.strerror)
            return 1
        url = f"http://{host}:{sock.getsockname()[1]}"

        def started() -> None:
            if runtime_file is not None:
                _write_runtime(runtime_file, url, supervisors)
                for s in supervisors:  # where a restarted worker listens now
                    s.on_up.append(lambda _: _write_runtime(runtime_file, url, supervisors))
            if processes > 1:
                assert metrics_folder is not None
                others = extra_router_specs(config_files, runtime_file, host,
                                            sock.getsockname()[1], processes, metrics_folder)
                routers_task.append(asyncio.create_task(start_extra_routers(others, routers)))
            print(f"serving: ready on {url}/v1", flush=True)

        routers: list[Supervisor] = []
        routers_task: list[asyncio.Task] = []
        server = await serve(app, config, sock, started)
        for task in routers_task:
            task.cancel()
        await asyncio.gather(*(r.stop() for r in routers))
        return 0 if server.started else 1
    except asyncio.CancelledError:
        return 130
    except WorkerFailed as error:
        log.error("%s", error)
        return 1
    finally:
        await asyncio.shield(asyncio.gather(*(s.stop() for s in supervisors)))
        if runtime_file is not None:
            runtime_file.unlink(missing_ok=True)
        if metrics_folder is not None:
            shutil.rmtree(metrics_folder, ignore_errors=True)
        log.info("stopped")


def _write_runtime(runtime_file: Path, router_url: str, supervisors: list[Supervisor]) -> None:
    """Where each worker listens, for scripts and tests. `url` and `pid` are what the router
    calls for the worker: its only process, a chat pool's router, or a media pool's first
    replica; a worker with several replicas also lists them all, by name. A chat pool's router
    also gives the URL of its Prometheus metrics (`metrics_url`), which the router merges."""
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
    info = {"router": router_url, "pid": os.getpid(), "workers": workers}
    tmp = runtime_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(runtime_file)


def run(config: Config, host: str, port: int, runtime_file: Path | None = None,
        config_files: tuple[Path, ...] = ()) -> int:
    try:
        keys = resolve_keys(config)
    except UnresolvedKey as e:
        log.error("%s", e)
        return 2
    # Before the loop starts, SIGTERM interrupts like Ctrl-C so a conversion child is killed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        model_paths = prepare_all(config)
    except KeyboardInterrupt:
        return 130
    stack = run_stack(config, model_paths, keys, host, port, runtime_file, config_files)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(stack)
    return uvloop.run(stack)
