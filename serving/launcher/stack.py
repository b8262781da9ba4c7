"""`serving up`: prepare models, start the workers, wait for them, serve the router.

Everything runs in one asyncio loop: the router (uvicorn), the supervisors that restart crashed
workers, and the pumps that copy worker logs. Ctrl-C or SIGTERM at any point stops the router
and then every worker; nothing is left running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from serving.config import Config
from serving.launcher.order import process_order, start_in_order
from serving.launcher.router_process import RouterRun, run_loop, serve_router
from serving.launcher.runtime_file import write_runtime
from serving.launcher.supervisor import Supervisor, WorkerFailed
from serving.launcher.worker_set import worker_endpoints, worker_specs
from serving.router import Principal, Services, UnresolvedKey, resolve_keys
from serving.weights.prepare import prepare_all

log = logging.getLogger("serving.launcher")


class Stack:
    """The worker processes of one `serving up`, and the router that serves them."""

    def __init__(self, config: Config, model_paths: dict[str, Path]):
        self.config = config
        self.by_name: dict[str, Supervisor] = {}
        specs = worker_specs(config, model_paths, lambda name: self.by_name[name].url)
        self.supervisors = [Supervisor(spec) for spec in specs]
        self.by_name.update((s.name, s) for s in self.supervisors)
        self.order = process_order(config, specs)

    async def start_workers(self) -> None:
        """Every worker, healthy. On a shared GPU, vLLM first: it sizes itself from the memory
        it finds free. A pool router starts once its replicas are up."""
        await start_in_order(self.supervisors, self.order)

    def endpoints(self):
        return worker_endpoints(
            self.config, lambda name: self.by_name[name].url,
            lambda name: getattr(self.by_name[name].spec, "metrics_url", None))

    def follow_restarts(self, services: Services) -> None:
        """A worker restarted on another port is reached there."""
        for s in self.supervisors:
            s.on_up.append(services.workers[s.spec.worker].member(s.name).move_to)

    def keep_runtime_file(self, path: Path, router_url: str) -> None:
        """Write where everything listens now, and again whenever a worker moves."""
        write_runtime(path, router_url, self.supervisors)
        for s in self.supervisors:
            s.on_up.append(lambda _: write_runtime(path, router_url, self.supervisors))

    async def stop(self) -> None:
        await asyncio.shield(asyncio.gather(*(s.stop() for s in self.supervisors)))


async def run_stack(config: Config, model_paths: dict[str, Path], keys: list[Principal],
                    host: str, port: int, runtime_file: Path | None = None,
                    config_files: tuple[Path, ...] = ()) -> int:
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

    stack = Stack(config, model_paths)
    processes = config.router.processes
    if processes > 1 and runtime_file is None:
        # The other router processes follow the workers through this file.
        runtime_file = config.state_dir / f"runtime-{os.getpid()}.json"
    try:
        startup = asyncio.create_task(stack.start_workers())
        await startup
        startup = None
        if stop_requested:  # between the workers' start and the router's
            return 130
        run = RouterRun(config, keys, host, port, config_files, processes=processes,
                        runtime_file=runtime_file)
        return await serve_router(
            run, stack.endpoints(), on_services=stack.follow_restarts,
            on_listening=None if runtime_file is None
            else lambda url: stack.keep_runtime_file(runtime_file, url))
    except asyncio.CancelledError:
        return 130
    except WorkerFailed as error:
        log.error("%s", error)
        return 1
    finally:
        await stack.stop()
        if runtime_file is not None:
            runtime_file.unlink(missing_ok=True)
        log.info("stopped")


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
    return run_loop(run_stack(config, model_paths, keys, host, port, runtime_file,
                              config_files))
