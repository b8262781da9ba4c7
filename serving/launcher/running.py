"""The worker processes `serving up` runs, one group per worker, and the router view they back.

`Stack` starts the groups a config asks for, points each worker's client in the router at a
worker restarted elsewhere, keeps the runtime file, and carries out the steps of a reload
(`reload.py`): which workers change, stopping some first, switching the router's view, and
draining and stopping what left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx

from serving.config import Config
from serving.launcher.drain import requests_held
from serving.launcher.order import process_order
from serving.launcher.runtime_file import StackInfo, write_runtime
from serving.launcher.supervisor import Supervisor
from serving.launcher.worker_set import WorkerGroup, start_groups
from serving.router import Principal, Services
from serving.router.services import build_view, build_workers
from serving.upstream.worker import Endpoints, Worker

log = logging.getLogger("serving.launcher")

PLACEHOLDER = Path("/model-to-prepare")  # a changed model's folder, before it is prepared
# Routers that follow the runtime file (the extra router processes, `serving router
# --workers-from`) move to the new workers within a second of it changing.
FOLLOWERS_S = 3.0


async def vllm_idle(supervisors: Iterable[Supervisor]) -> bool:
    """Whether vLLM processes run and queue no request (whoever sent them: the routers that
    follow this one count too); others (media workers, pool routers) do not say."""
    async with httpx.AsyncClient(timeout=5) as http:
        for s in supervisors:
            if s.port is None or s.state != "up" or "vllm" not in " ".join(s.spec.argv):
                continue
            try:
                text = (await http.get(f"{s.url}/metrics")).text
            except httpx.HTTPError:
                continue  # not answering: nothing to wait for
            if (requests_held(text) or 0) > 0:
                return False
    return True


def client_settings(config: Config, name: str) -> tuple:
    """What a worker's client in the router is made from, besides where the worker is."""
    worker, router = config.workers[name], config.router
    return (router.timeouts, router.max_connections_per_worker, worker.max_in_flight,
            worker.routing.health_check_interval_s)


class Stack:
    def __init__(self, config: Config, model_paths: Mapping[str, Path]):
        self.config = config
        self.groups = {name: WorkerGroup(name, w, config, model_paths[name])
                       for name, w in config.workers.items()}
        self.services: Services | None = None
        self.runtime_file: Path | None = None
        self.info = StackInfo("")

    def supervisors(self) -> list[Supervisor]:
        return [s for g in self.groups.values() for s in g.supervisors]

    async def start_workers(self) -> None:
        """Every worker, healthy. On a shared GPU, vLLM first: it sizes itself from the memory
        it finds free. A pool router starts once its replicas are up."""
        specs = [s for g in self.groups.values() for s in g.specs]
        await start_groups(self.groups.values(), process_order(self.config, specs))

    def endpoints(self) -> dict[str, Endpoints]:
        return {name: g.endpoints() for name, g in self.groups.items()}

    def attach(self, services: Services) -> None:
        """Serve `services` from now on: wire each group to its worker's client."""
        self.services = services
        for name, group in self.groups.items():
            self._wire(group, services.view.workers[name])

    def _wire(self, group: WorkerGroup, worker: Worker) -> None:
        """A process of `group` restarted on another port is reached there, and the runtime
        file says so."""
        for s in group.supervisors:
            s.on_up.append(worker.member(s.name).move_to)
            s.on_up.append(lambda _: self.write_runtime())

    def keep_runtime_file(self, path: Path, info: StackInfo) -> None:
        self.runtime_file, self.info = path, info
        self.write_runtime()

    def write_runtime(self) -> None:
        if self.runtime_file is not None:
            write_runtime(self.runtime_file, self.info, self.supervisors())

    async def stop(self) -> None:
        await asyncio.shield(asyncio.gather(*(g.stop() for g in self.groups.values())))

    # --- reloading ------------------------------------------------------------------------

    def actions(self, new: Config) -> dict[str, str]:
        """What a reload to `new` does to each worker, from the processes each config asks
        for: a model to prepare again counts as changed."""
        out = {}
        for name in self.config.workers.keys() - new.workers.keys():
            out[name] = "removed"
        for name, worker in new.workers.items():
            group = self.groups.get(name)
            if group is None:
                out[name] = "added"
                continue
            same_model = (worker.entry == group.worker.entry
                          and worker.args is not None and group.worker.args is not None
                          and getattr(worker.args, "dtype", None)
                          == getattr(group.worker.args, "dtype", None))
            path = group.model_path if same_model else PLACEHOLDER
            after = WorkerGroup(name, worker, new, path)
            if worker.endpoints != group.worker.endpoints:
                out[name] = "replaced"
            elif group.scales_to(after):
                out[name] = "scaled"
            elif not group.same_processes(after):
                out[name] = "replaced"
            elif client_settings(self.config, name) != client_settings(new, name):
                out[name] = "updated"
            else:
                out[name] = "unchanged"
        return out

    def drain_first(self, new: Config, replaced: set[str]) -> set[str]:
        """The replaced workers that stop before their replacement starts: those set to, and
        on a GPU those whose memory plan cannot hold the old and the new together."""
        first = {n for n in replaced if new.workers[n].reload_strategy == "drain_first"}
        auto = {n for n in replaced - first if new.workers[n].reload_strategy == "auto"}
        if new.device == "cuda" and auto and not self._fits_beside(new, auto):
            first |= auto
        return first

    def _fits_beside(self, new: Config, starting: Iterable[str]) -> bool:
        """Whether the GPUs hold every running worker and the new `starting` ones at once."""
        from serving.config import ConfigError
        from serving.config.plan import check_plan, memory_plan

        both = {**self.config.workers, **{f"{n}~new": new.workers[n] for n in starting}}
        try:
            check_plan(memory_plan(new.model_copy(update={"workers": both})))
        except ConfigError as e:
            log.info("the old and new workers do not fit together, so they swap drain-first: "
                     "%s", e)
            return False
        return True

    async def stop_new(self, groups: Iterable[WorkerGroup]) -> None:
        """Stop the processes of `groups` that this stack does not run (a failed start)."""
        running = {id(s) for s in self.supervisors()}
        await asyncio.gather(*(s.stop() for g in groups for s in g.supervisors
                               if id(s) not in running))

    async def stop_first(self, names: set[str]) -> dict[str, WorkerGroup]:
        """Take the workers `names` out of the view (their models answer 503
        `model_reloading`), let their requests finish, stop them."""
        if not names:
            return {}
        services = self.services
        assert services is not None
        view = services.view
        reloading = {**view.registry.reloading, **{
            self.groups[n].worker.entry.id: self.groups[n].started_s or 30.0
            for n in names if self.groups[n].worker.entry is not None}}
        await services.apply(build_view(view.config, view.workers,
                                        self._keys(), reloading))
        stopped = {n: self.groups[n] for n in names}
        for name, group in stopped.items():
            worker = view.workers[name]
            await worker.drained(self.config.workers[name].drain_timeout_s)
            log.info("%s: drained; stopping it before its replacement starts", name)
            await group.stop()
        return stopped

    async def restore(self, stopped: Mapping[str, WorkerGroup]) -> None:
        """A replacement failed: start what was stopped for it again, and serve it."""
        if not stopped:
            return
        assert self.services is not None
        again = {n: WorkerGroup(n, g.worker, self.config, g.model_path)
                 for n, g in stopped.items()}
        await start_groups(again.values(), process_order(
            self.config, [s for g in again.values() for s in g.specs]))
        self.groups.update(again)
        view = self.services.view
        workers = build_workers(self.config, {n: g.endpoints() for n, g in again.items()},
                                {n: w for n, w in view.workers.items() if n not in again})
        for name, group in again.items():
            self._wire(group, workers[name])
        await self.services.apply(build_view(self.config, workers, self._keys()))
        self.write_runtime()

    def _keys(self) -> list[Principal]:
        assert self.services is not None
        return self.services.view.keys.principals()

    async def switch(self, new: Config, keys: list[Principal],
                     starting: Mapping[str, WorkerGroup]) -> None:
        """Serve `new`: the router's view in one step, then drain and stop what left it."""
        services = self.services
        assert services is not None
        old_config, old_groups = self.config, dict(self.groups)
        kept = {n: w for n, w in services.view.workers.items()
                if n in new.workers and n not in starting
                and client_settings(old_config, n) == client_settings(new, n)}
        endpoints = {n: (starting[n] if n in starting else old_groups[n]).endpoints()
                     for n in new.workers}
        workers = build_workers(new, endpoints, kept)
        self.config = new
        self.groups = {n: starting.get(n) or old_groups[n] for n in new.workers}
        for name, group in starting.items():
            self._wire(group, workers[name])
        for name in new.workers.keys() - starting.keys():
            if workers[name] is not services.view.workers.get(name):
                self._wire(old_groups[name], workers[name])  # a new client, same processes
        left = await services.apply(build_view(new, workers, keys))
        self.info = StackInfo(self.info.router, self.info.control, services.view.digest)
        self.write_runtime()
        running = {id(s) for s in self.supervisors()}
        retired: dict[str, list[Supervisor]] = {}
        for name, group in old_groups.items():
            if gone := [s for s in group.supervisors if id(s) not in running]:
                retired[name] = gone
        await self._retire(left, retired, old_config)

    async def _retire(self, left: list[Worker], retired: dict[str, list[Supervisor]],
                      old_config: Config) -> None:
        """Let the requests of the clients that left end, then stop the old processes."""
        assert self.services is not None
        timeouts = {n: w.drain_timeout_s for n, w in old_config.workers.items()}
        await asyncio.gather(*(self.services.retire([w], timeouts.get(w.name, 60.0))
                               for w in left))
        if retired:
            await asyncio.sleep(FOLLOWERS_S)
        await asyncio.gather(*(self._stop_idle(name, processes, timeouts.get(name, 60.0))
                               for name, processes in retired.items()))

    async def _stop_idle(self, name: str, processes: list[Supervisor], timeout_s: float
                         ) -> None:
        """Stop processes that left, once they hold no request (at most `timeout_s`)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await vllm_idle(processes) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
        log.info("%s: stopping %s", name, ", ".join(s.name for s in processes))
        await asyncio.gather(*(s.stop() for s in processes))
