"""`serving up`: prepare models, start the workers, wait for them, serve the router.

Everything runs in one asyncio loop: the router (uvicorn), the supervisors that restart crashed
workers, the pumps that copy worker logs, and reloads. Ctrl-C or SIGTERM at any point stops the
router and then every worker; nothing is left running. SIGHUP (like `POST /v1/admin/reload`
and `serving reload`) applies the edited config files in place (`reload.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from serving.config import Config
from serving.errors import OpenAIError
from serving.launcher.banner import ready_message
from serving.launcher.reload import StackReloader
from serving.launcher.router_process import RouterRun, run_loop, serve_router
from serving.launcher.running import Stack
from serving.launcher.runtime_file import StackInfo
from serving.launcher.supervisor import WorkerFailed
from serving.router import Principal, Services, UnresolvedKey, resolve_keys
from serving.weights.prepare import prepare_all

log = logging.getLogger("serving.launcher")


def default_runtime_file(config: Config) -> Path:
    """Where `serving up` says where it listens unless told (`serving reload` looks here)."""
    return config.state_dir / "runtime.json"


async def run_stack(config: Config, model_paths: dict[str, Path], keys: list[Principal],
                    host: str, port: int, runtime_file: Path | None = None,
                    config_files: tuple[Path, ...] = ()) -> int:
    """`config_files` are what `config` was loaded from: a reload and the extra router
    processes read them again."""
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
    reloader = StackReloader(stack, config_files)
    runtime_file = runtime_file or default_runtime_file(config)
    try:
        startup = asyncio.create_task(stack.start_workers())
        await startup
        startup = None
        if stop_requested:  # between the workers' start and the router's
            return 130

        def on_services(services: Services) -> None:
            stack.attach(services)
            services.reloader = reloader

        def on_listening(url: str, control: str | None) -> None:
            assert stack.services is not None
            runtime_file.parent.mkdir(parents=True, exist_ok=True)
            stack.keep_runtime_file(runtime_file,
                                    StackInfo(url, control, stack.services.view.digest))
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(
                _reload_on_signal(reloader)))

        run = RouterRun(config, keys, host, port, config_files,
                        processes=config.router.processes, runtime_file=runtime_file,
                        control=True, ready_message=ready_message(config))
        return await serve_router(run, stack.endpoints(), on_services=on_services,
                                  on_listening=on_listening)
    except asyncio.CancelledError:
        return 130
    except WorkerFailed as error:
        log.error("%s", error)
        return 1
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)
        await stack.stop()
        runtime_file.unlink(missing_ok=True)
        log.info("stopped")


async def _reload_on_signal(reloader: StackReloader) -> None:
    log.info("received SIGHUP; reloading %s", ", ".join(map(str, reloader.files)))
    with contextlib.suppress(OpenAIError):  # refused or already running: logged
        await reloader.request()


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
