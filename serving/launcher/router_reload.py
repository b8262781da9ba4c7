"""Reloading a router that runs no workers of its own (`serving router`).

- `RouterReloader`: the router reads its config files again and serves them: keys, limits,
  router settings, and where the workers are (their `endpoints`, or the stack's runtime
  file). Workers it no longer reaches drain before their clients close. It runs on
  `POST /v1/admin/reload`, SIGHUP, and (with `--watch-config`, as the Helm chart runs it) when
  the files change, as a Kubernetes ConfigMap does when it is edited.
- `ForwardingReloader`: a router beside a stack (`--workers-from`, and the stack's own extra
  router processes) passes a reload to the stack's launcher, which owns the workers.
- `follow_stack`: such a router follows the stack's runtime file: a worker restarted on
  another port is reached there, and once the stack applied a reload (its config digest
  changed) the router reloads its own files too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from serving.config import Config, ConfigError, load_config
from serving.errors import OpenAIError
from serving.launcher.reload import refused, restart_only_changes
from serving.launcher.runtime_file import read_runtime, worker_urls
from serving.router import Services, UnresolvedKey, resolve_keys
from serving.router.services import build_view, build_workers
from serving.upstream.worker import Endpoints, Worker

log = logging.getLogger("serving.launcher")

FOLLOW_INTERVAL_S = 1.0
WATCH_INTERVAL_S = 2.0
FORWARD_TIMEOUT_S = 30.0


class RouterReloader:
    def __init__(self, services: Services, files: tuple[Path, ...],
                 runtime_file: Path | None = None):
        self.services = services
        self.files = files
        self.runtime_file = runtime_file
        self.last: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    async def request(self, authorization: str = "") -> dict[str, Any]:
        if self._lock.locked():
            raise OpenAIError(409, "A reload is still being applied; ask again once it is "
                              "done.", code="reload_in_progress")
        async with self._lock:
            started = time.time()
            try:
                config, keys, endpoints = await asyncio.to_thread(self._load)
            except (ConfigError, UnresolvedKey) as e:
                self.services.metering.metrics.reloads.labels("refused").inc()
                log.error("reload refused: %s", e)
                raise refused(str(e)) from None
            await self.apply(config, keys, endpoints)
            self.last = {"object": "reload", "id": f"reload_{secrets.token_hex(8)}",
                         "status": "applied", "config": self.services.view.digest,
                         "created_at": started, "finished_at": time.time(), "error": None,
                         "workers": {}}
            return self.last

    async def status(self, authorization: str = "") -> dict[str, Any] | None:
        return self.last

    def _load(self):
        config = load_config(list(self.files))
        if changed := restart_only_changes(self.services.config, config):
            raise ConfigError(f"{self.files[-1]}: {', '.join(changed)}: cannot change while "
                              "the router runs; restart it")
        return config, resolve_keys(config), worker_urls(config, self.runtime_file)

    async def apply(self, config: Config, keys, endpoints: dict[str, Endpoints]) -> None:
        """Serve `config`; clients of workers whose place or client settings changed are
        made anew, and the old ones close once their requests ended."""
        services, old = self.services, self.services.config
        kept = {n: w for n, w in services.view.workers.items()
                if n in config.workers and w.endpoints == endpoints[n]
                and _client(old, n) == _client(config, n)}
        workers = build_workers(config, endpoints, kept)
        left = await services.apply(build_view(config, workers, keys))
        services.metering.metrics.reloads.labels("applied").inc()
        log.info("reloaded %s (config %s)", ", ".join(map(str, self.files)),
                 services.view.digest)
        timeouts = {n: w.drain_timeout_s for n, w in old.workers.items()}
        for worker in left:
            task = asyncio.create_task(
                services.retire([worker], timeouts.get(worker.name, 60.0)))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def reload_logged(self) -> None:
        """A reload nobody waits on (SIGHUP, a changed file): its outcome goes to the log."""
        with contextlib.suppress(OpenAIError):  # refused: already logged
            await self.request()


def _client(config: Config, name: str) -> tuple:
    from serving.launcher.running import client_settings

    return client_settings(config, name)


class ForwardingReloader:
    """Passes reloads to the launcher of the stack whose runtime file this router follows."""

    def __init__(self, runtime_file: Path):
        self.runtime_file = runtime_file

    async def _call(self, method: str, authorization: str) -> httpx.Response:
        try:
            control = read_runtime(self.runtime_file)[0].control
        except ConfigError:
            control = None
        if control is None:
            raise OpenAIError(503, "The stack's launcher cannot be reached to reload; retry "
                              "shortly.", code="service_unavailable",
                              headers={"Retry-After": "5"})
        async with httpx.AsyncClient(base_url=control, timeout=FORWARD_TIMEOUT_S) as client:
            try:
                return await client.request(method, "/v1/admin/reload",
                                            headers={"Authorization": authorization})
            except httpx.HTTPError as e:
                raise OpenAIError(503, f"The stack's launcher did not answer ({e}); retry "
                                  "shortly.", code="service_unavailable",
                                  headers={"Retry-After": "5"}) from None

    async def request(self, authorization: str) -> dict[str, Any]:
        return _answer(await self._call("POST", authorization))

    async def status(self, authorization: str) -> dict[str, Any] | None:
        r = await self._call("GET", authorization)
        return None if r.status_code == 404 else _answer(r)


def _answer(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if response.status_code >= 400:
        error = body.get("error") or {}
        raise OpenAIError(response.status_code, error.get("message") or response.text,
                          code=error.get("code"), headers=(
                              {"Retry-After": response.headers["retry-after"]}
                              if "retry-after" in response.headers else None))
    return body


async def follow_stack(services: Services, path: Path, reloader: RouterReloader) -> None:
    """Follow the stack's runtime file: workers that moved, and reloads the stack applied."""
    seen_mtime, seen_config = None, None
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL_S)
        with contextlib.suppress(OSError):
            stamp = path.stat().st_mtime_ns
            if stamp == seen_mtime:
                continue
            try:
                stack, urls = read_runtime(path)
            except ConfigError:
                continue  # being rewritten; the next look finds it whole
            seen_mtime = stamp
            if seen_config is not None and stack.config != seen_config:
                log.info("the stack applied a reload (config %s); reloading", stack.config)
                await reloader.reload_logged()
            seen_config = stack.config
            _follow_moves(services.view.workers, urls)


def _follow_moves(workers: dict[str, Worker], urls: dict[str, Endpoints]) -> None:
    for name, worker in workers.items():
        if name in urls and _same_shape(worker.endpoints, urls[name]):
            worker.follow(urls[name])


def _same_shape(a: Endpoints, b: Endpoints) -> bool:
    return len(a.replicas) == len(b.replicas) and (a.gateway is None) == (b.gateway is None)


async def watch_files(files: tuple[Path, ...], reloader: RouterReloader) -> None:
    """Reload when the config files' contents change (a ConfigMap is updated in place)."""

    def digest() -> str | None:
        try:
            return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        except OSError:
            return None

    last = await asyncio.to_thread(digest)
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        now = await asyncio.to_thread(digest)
        if now is not None and now != last:
            last = now
            log.info("config files changed; reloading")
            await reloader.reload_logged()
