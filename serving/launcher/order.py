"""Which workers start before which: on a shared GPU, vLLM first.

vLLM measures the GPU memory it may take when it starts (the free memory it finds, less what
its own load and profiling consume). A media worker moving a 30 GiB pipeline onto the same GPU
in that window makes it fail ("No available memory for the cache blocks") or pick a KV cache
size by chance. So every media worker that shares a GPU with a vLLM worker waits until that
vLLM worker is healthy; workers on other GPUs, and every worker on CPU, start at once.

A worker with replicas is several processes: a media worker waits for every replica of the
vLLM worker it shares a GPU with, and a chat pool's router waits for its own replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from serving.config import Config, WorkerConfig
from serving.launcher.pools import PoolRouterSpec
from serving.launcher.supervisor import Supervisor, WorkerSpec


def shares_gpu(a: WorkerConfig, b: WorkerConfig) -> bool:
    """Unset `gpus` means every GPU the node has, so it shares with everyone."""
    return a.gpus is None or b.gpus is None or bool(set(a.gpus) & set(b.gpus))


def _is_vllm(worker: WorkerConfig) -> bool:
    return worker.entry is not None and worker.entry.engine == "vllm"


def start_after(config: Config) -> dict[str, set[str]]:
    """For each worker, the workers that must be healthy before it starts."""
    workers: Mapping[str, WorkerConfig] = config.workers
    if config.device != "cuda":
        return {name: set() for name in workers}
    return {
        name: set() if _is_vllm(worker) else {
            other for other, w in workers.items() if _is_vllm(w) and shares_gpu(worker, w)}
        for name, worker in workers.items()
    }


def process_order(config: Config, specs: Iterable[WorkerSpec]) -> dict[str, set[str]]:
    """`start_after`, for processes: each process name -> the processes healthy before it."""
    specs = list(specs)
    replicas: dict[str, set[str]] = {}
    for spec in specs:
        if not isinstance(spec, PoolRouterSpec):
            replicas.setdefault(spec.worker, set()).add(spec.name)
    after = start_after(config)
    return {
        spec.name: set(replicas.get(spec.worker, ())) if isinstance(spec, PoolRouterSpec)
        else set().union(*(replicas.get(w, set()) for w in after.get(spec.worker, ())))
        for spec in specs
    }


async def start_in_order(supervisors: Iterable[Supervisor], after: Mapping[str, set[str]]
                         ) -> None:
    """Start every worker, each once those in `after[name]` are healthy; raise on the first
    failure, abandoning the others' startup (a waiting worker is then never spawned)."""
    tasks: dict[str, asyncio.Task] = {}

    async def start(supervisor: Supervisor) -> None:
        # Names not started here run already (a pool's kept replicas, on a reload).
        if waits := [tasks[name] for name in after.get(supervisor.name, ()) if name in tasks]:
            await asyncio.gather(*waits)
        await supervisor.start()

    for supervisor in supervisors:
        tasks[supervisor.name] = asyncio.create_task(start(supervisor))
    try:
        await asyncio.gather(*tasks.values())
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
