"""Reloading a running stack: the edited config applied in place, worker by worker.

The launcher owns the worker processes, so it applies a reload (`POST /v1/admin/reload`,
SIGHUP, `serving reload`), in the steps of a controller:
1. validate the files the stack was started with (what `serving config check` checks, the
   keys, and no change to a setting that needs a restart): a 400 naming the file and key, and
   nothing changes;
2. diff each worker's processes, as `worker_set` builds them from the old config and the new:
   - unchanged: not touched (a client setting such as `max_in_flight` changed: a new client
     to the same processes);
   - added: started, and joins once healthy;
   - removed: leaves the view (its model answers 404), its requests finish (up to
     `drain_timeout_s`), then it stops;
   - scaled (only the replica count moved): new replicas start, removed ones drain and
     stop, the others are kept; a chat pool gets a new pool router for its new members;
   - replaced: blue/green when the memory plan holds the old and the new processes together
     (on CPU: always, unless `reload_strategy: drain_first`): the new one starts beside the
     old, the view switches once it is healthy, and the old one drains. Otherwise drain first:
     the model answers 503 `model_reloading` (Retry-After: the old one's start time) while
     the old one drains and the new one starts;
3. swap the router's view in one step (keys, limits, CORS, image rules, log level included)
   and write the runtime file, which the other router processes follow;
4. drain and stop what left.

A new worker that fails to start is stopped; what it was to replace keeps serving (a worker
stopped first is started again) and the reload is `failed`, with the reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.config import Config, ConfigError, load_config
from serving.errors import OpenAIError
from serving.launcher.order import process_order
from serving.launcher.running import Stack
from serving.launcher.supervisor import WorkerFailed
from serving.launcher.worker_set import WorkerGroup, start_groups
from serving.logs import request_id_var
from serving.router import Principal, UnresolvedKey, resolve_keys
from serving.weights.prepare import PrepareError, chat_template_path, prepare_model

log = logging.getLogger("serving.launcher")

Action = Literal["unchanged", "updated", "added", "removed", "replaced", "scaled"]

# Settings a running stack cannot change: its ports, stores and folders.
RESTART_ONLY = (
    ("device",), ("state_dir",), ("cache_dir",), ("router", "host"), ("router", "port"),
    ("router", "processes"), ("router", "rate_limit_store"), ("router", "database"),
    ("router", "usage_db"), ("router", "artifacts"), ("router", "artifacts_endpoint"),
    ("router", "metrics_port"), ("router", "ledger"), ("router", "videos"),
    ("router", "shutdown_grace_s"), ("router", "generated_key_file"),
)


@dataclass
class WorkerChange:
    action: Action
    strategy: Literal["blue_green", "drain_first"] | None = None
    result: str = "pending"  # pending, done, failed: ...


@dataclass
class ReloadStatus:
    id: str
    status: Literal["pending", "applied", "failed"]
    config: str  # the digest of the config being applied
    created_at: float
    finished_at: float | None = None
    error: str | None = None
    workers: dict[str, WorkerChange] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"object": "reload", **asdict(self)}


def refused(message: str) -> OpenAIError:
    return OpenAIError(400, f"The config was not applied: {message}", code="invalid_config")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    def at(config: Config, path: tuple[str, ...]) -> Any:
        value: Any = config
        for part in path:
            value = getattr(value, part)
        return value.model_dump() if hasattr(value, "model_dump") else value

    return [".".join(p) for p in RESTART_ONLY if at(old, p) != at(new, p)]


class StackReloader:
    """Applies reloads to `stack` and the router serving it; one at a time."""

    def __init__(self, stack: Stack, files: tuple[Path, ...]):
        self.stack = stack
        self.files = files
        self.last: ReloadStatus | None = None
        self._task: asyncio.Task | None = None

    @property
    def metrics(self):
        assert self.stack.services is not None
        return self.stack.services.metering.metrics

    async def request(self, authorization: str = "") -> dict[str, Any]:
        if self._task is not None and not self._task.done():
            assert self.last is not None
            raise OpenAIError(409, f"Reload {self.last.id} is still being applied; ask "
                              "again once it is done (GET /v1/admin/reload).",
                              code="reload_in_progress")
        try:
            new, keys = await asyncio.to_thread(self.validate)
        except (ConfigError, UnresolvedKey) as e:
            self.metrics.reloads.labels("refused").inc()
            log.error("reload refused: %s", e)
            raise refused(str(e)) from None
        from serving.router.services import config_digest

        self.last = ReloadStatus(f"reload_{secrets.token_hex(8)}", "pending",
                                 config_digest(new), time.time())
        self.last.workers = {name: WorkerChange(action)
                             for name, action in self.stack.actions(new).items()}
        log.info("reload %s: %s", self.last.id, ", ".join(
            f"{name} {c.action}" for name, c in self.last.workers.items()))
        # Its log lines carry the reload's id, not the id of the request that asked for it.
        context = contextvars.Context()
        context.run(request_id_var.set, self.last.id)
        self._task = asyncio.create_task(self._apply(self.last, new, keys), context=context)
        return self.last.body()

    async def status(self, authorization: str = "") -> dict[str, Any] | None:
        return None if self.last is None else self.last.body()

    def validate(self) -> tuple[Config, list[Principal]]:
        """The new config and its keys, checked as `serving config check` checks them."""
        new = load_config(list(self.files))
        if changed := restart_only_changes(self.stack.config, new):
            raise ConfigError(f"{self.files[-1]}: {', '.join(changed)}: cannot change while "
                              "the stack runs (its ports, stores and folders); restart it")
        if new.device == "cuda":
            from serving.config.plan import checked_plan

            checked_plan(new, str(self.files[-1]))
        for worker in new.workers.values():
            assert worker.entry is not None
            chat_template_path(worker.entry)
        return new, resolve_keys(new)

    async def _apply(self, status: ReloadStatus, new: Config, keys: list[Principal]) -> None:
        try:
            await self._apply_steps(status, new, keys)
            status.status = "applied"
            self.metrics.reloads.labels("applied").inc()
            log.info("reload %s applied", status.id)
        except Exception as e:
            status.status, status.error = "failed", str(e) or type(e).__name__
            for change in status.workers.values():
                if change.result == "pending":
                    change.result = "not applied"
            self.metrics.reloads.labels("failed").inc()
            log.error("reload %s failed: %s; the previous state keeps serving", status.id,
                      status.error)
        finally:
            status.finished_at = time.time()

    async def _apply_steps(self, status: ReloadStatus, new: Config,
                           keys: list[Principal]) -> None:
        stack = self.stack
        starting = await self._new_groups(status, new)
        drain_first = stack.drain_first(new, {n for n in starting
                                              if status.workers[n].action == "replaced"})
        for name in starting:
            if status.workers[name].action == "replaced":
                status.workers[name].strategy = ("drain_first" if name in drain_first
                                                  else "blue_green")
        stopped = await stack.stop_first(drain_first)
        try:
            await start_groups(starting.values(), process_order(
                new, [s for g in starting.values() for s in g.specs]))
        except (WorkerFailed, asyncio.CancelledError) as e:
            await stack.stop_new(starting.values())
            for name in starting:
                status.workers[name].result = f"failed: {e}"
            await stack.restore(stopped)
            raise
        for name in starting:
            status.workers[name].result = "done"
        await stack.switch(new, keys, starting)
        for change in status.workers.values():
            if change.result == "pending":
                change.result = "done"

    async def _new_groups(self, status: ReloadStatus, new: Config) -> dict[str, WorkerGroup]:
        """The process groups to start: added and replaced workers, their models prepared."""
        groups = {}
        for name, change in status.workers.items():
            worker = new.workers.get(name)
            if change.action == "scaled":
                old = self.stack.groups[name]
                assert worker is not None
                groups[name] = WorkerGroup(name, worker, new, old.model_path,
                                           keep=old.replicas())
                continue
            if change.action not in ("added", "replaced"):
                continue
            assert worker is not None
            assert worker.entry is not None
            try:
                path = await asyncio.to_thread(prepare_model, worker.entry, new.cache_dir,
                                               getattr(worker.args, "dtype", "auto"))
            except PrepareError as e:
                change.result = f"failed: {e}"
                raise
            groups[name] = WorkerGroup(name, worker, new, path)
        return groups
