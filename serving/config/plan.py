"""The memory plan of a CUDA config: what each worker holds on each GPU, checked before start.

Every worker is planned at its peak, not its idle size: PyTorch's caching allocator keeps the
most a process ever held reserved, so after the first large request a worker's peak *is* its
steady state. A GPU fits when the sum of its workers' peaks, plus the config's headroom, is at
most its memory. The numbers come from the catalog (`gpu_memory`, read from the weights and the
engines' source) and the engine args (batch size, VAE slicing, offload, KV cache size).

A vLLM worker on a GPU it shares gets two more checks, both from vLLM's own start logic: its
KV cache must be sized explicitly (`kv_cache_memory_bytes`; otherwise vLLM takes a share of
whatever it finds free), and `gpu_memory_utilization` x GPU memory must be free when it
restarts beside the media workers' peaks, since vLLM refuses to start with less free.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from serving.config.catalog import GpuMemory
from serving.config.deployment import Config, WorkerConfig
from serving.config.engines import DiffusersArgs, TtsArgs, VllmArgs, WhisperArgs
from serving.config.loader import ConfigError

GIB = 2**30
# What a process's CUDA context, cuBLAS workspace and allocator slack take on each GPU it uses.
CONTEXT_GIB = 0.5
VLLM_DEFAULT_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization


def parse_bytes(text: str) -> int:
    """A size as vLLM's `--kv-cache-memory-bytes` reads it: k M G T; lower case is decimal
    (1g = 10^9), upper case binary (1G = 2^30)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT])?", text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, suffix = match.groups()
    if suffix is None:
        return int(float(number))
    power = "kmgt".index(suffix.lower()) + 1
    return int(float(number) * (1000**power if suffix.islower() else 1024**power))


@dataclass
class Row:
    """One worker on one GPU, in GiB."""

    worker: str
    model: str
    weights: float
    working: float
    peak: float
    note: str = ""


@dataclass
class GpuPlan:
    index: int
    kind: str
    capacity: float
    headroom: float
    rows: list[Row] = field(default_factory=list)
    # Other reasons this GPU's workers would not start as planned (vLLM's restart check).
    problems: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return sum(r.peak for r in self.rows)

    @property
    def free(self) -> float:
        return self.capacity - self.peak

    @property
    def fits(self) -> bool:
        return self.free >= self.headroom

    def label(self) -> str:
        return f"GPU {self.index} ({self.kind}, {self.capacity:.1f} GiB)"


def device_memory_gib() -> list[tuple[str, float]]:
    """(name, GiB) of each GPU the driver reports; empty without nvidia-smi or a GPU."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        gpus.append((name.strip(), float(mib) / 1024))
    return gpus


def _gpus_of(worker: WorkerConfig, count: int) -> list[int]:
    """The GPUs a worker uses, once per local replica on each: vLLM spreads over
    tensor_parallel_size of its replica's share of `gpus`; a media worker uses the first one
    it sees (cuda:0). Replicas elsewhere (`endpoints`) use none of this node's."""
    args, used = worker.args, []
    for replica in range(0 if worker.endpoints else worker.replicas):
        share = worker.replica_gpus(replica)
        visible = share if share is not None else list(range(count))
        used += visible[:args.tensor_parallel_size] if isinstance(args, VllmArgs) else visible[:1]
    return used


def _on_gpu(worker: WorkerConfig) -> bool:
    args = worker.args
    return not isinstance(args, TtsArgs) or "CUDAExecutionProvider" in (args.providers or [])


def _media_row(name: str, worker: WorkerConfig, mem: GpuMemory) -> Row:
    args, model = worker.args, worker.model
    if isinstance(args, DiffusersArgs):
        batch = args.max_batch_size
        decoded = 1 if args.vae_slicing or args.vae_tiling else batch
        denoise, decode = mem.activations * batch, mem.decode * decoded
        note = f"batch {batch}" + (f", VAE {'sliced' if decoded == 1 else 'whole'}"
                                   if batch > 1 else "")
        if args.offload == "none":
            weights = mem.total_weights
            working = max(denoise, decode)
            return Row(name, model, weights, working, weights + working + CONTEXT_GIB, note)
        # Offloaded: one component on the GPU at a time, the allocator keeping the largest.
        weights = max(mem.weights.values())
        peak = max(weights, mem.weights.get("transformer", 0.0) + denoise,
                   mem.weights.get("vae", 0.0) + decode)
        return Row(name, model, weights, peak - weights, peak + CONTEXT_GIB,
                   f"{note}, offload {args.offload}")
    copies = args.num_workers if isinstance(args, WhisperArgs) else 1
    windows = args.batch_size if isinstance(args, WhisperArgs) else 1
    note = ", ".join([*([f"{copies} CTranslate2 replicas"] if copies > 1 else []),
                      *([f"{windows} windows a batch"] if windows > 1 else [])])
    weights, working = mem.total_weights * copies, mem.activations * copies * windows
    return Row(name, model, weights, working, weights + working + CONTEXT_GIB, note)


def _vllm_row(name: str, worker: WorkerConfig, mem: GpuMemory, capacity: float,
              shared: bool) -> Row:
    args = worker.args
    assert isinstance(args, VllmArgs)
    weights = mem.total_weights / args.tensor_parallel_size
    fixed = weights + mem.activations + CONTEXT_GIB
    where = f"workers.{name}.engine_args"
    if args.kv_cache_memory_bytes is None:
        if shared:
            raise ConfigError(
                f"{where}.kv_cache_memory_bytes: the chat worker shares its GPU, so its KV "
                "cache must be sized explicitly (vLLM would take a share of whatever is free "
                "when it starts, and a different share on each restart)")
        peak = capacity * (args.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION)
        kv = peak - fixed
    else:
        kv = parse_bytes(args.kv_cache_memory_bytes) / GIB
        peak = fixed + kv
    note = f"KV {kv:.1f} GiB"
    if mem.kv_bytes_per_token:
        tokens = int(kv * GIB / mem.kv_bytes_per_token * args.tensor_parallel_size)
        note += f" = {tokens:,} tokens"
    return Row(name, worker.model, weights, kv, peak, note)


def memory_plan(config: Config, devices: list[tuple[str, float]] | None = None
                ) -> list[GpuPlan]:
    """Each GPU's rows; raises ConfigError for a number the plan cannot do without.

    `devices`: the GPUs present (name, GiB), for capacities the config leaves unset.
    """
    spec = config.gpu
    if devices is None and spec.memory_gib is None:
        devices = device_memory_gib()
    devices = devices or []
    plans: dict[int, GpuPlan] = {}
    for index in range(spec.count):
        capacity = spec.memory_gib_per_gpu.get(index, spec.memory_gib)
        kind = spec.kind
        if capacity is None and index < len(devices):
            kind, capacity = devices[index]
        if capacity is None:
            raise ConfigError(
                f"gpu.memory_gib: unset, and no GPU {index} to read it from: set it (e.g. 79.6 "
                "for an H100 80GB, 139.8 for an H200) so the memory plan can be checked")
        plans[index] = GpuPlan(index, kind, capacity, spec.headroom_gib)

    placed: dict[int, list[str]] = {i: [] for i in plans}
    for name, worker in config.workers.items():
        if not _on_gpu(worker):
            continue
        gpus = _gpus_of(worker, spec.count)
        if unknown := [g for g in gpus if g not in plans]:
            raise ConfigError(f"workers.{name}.gpus: GPU {unknown[0]} is not one of the "
                              f"{spec.count} GPUs in `gpu.count`")
        for g in gpus:
            placed[g].append(name)

    for name, worker in config.workers.items():
        if not _on_gpu(worker):
            continue
        assert worker.entry is not None
        mem = worker.entry.gpu_memory
        if mem is None:
            raise ConfigError(f"workers.{name}.model: catalog entry '{worker.entry.id}' has no "
                              "`gpu_memory`; the memory plan of a CUDA config needs it")
        for g in _gpus_of(worker, spec.count):
            if isinstance(worker.args, VllmArgs):
                plans[g].rows.append(_vllm_row(name, worker, mem, plans[g].capacity,
                                               shared=len(placed[g]) > 1))
            else:
                plans[g].rows.append(_media_row(name, worker, mem))

    for name, worker in config.workers.items():
        args = worker.args
        if not isinstance(args, VllmArgs) or args.kv_cache_memory_bytes is None:
            continue
        for g in _gpus_of(worker, spec.count):
            plan = plans[g]
            if len(placed[g]) < 2:
                continue
            others = sum(r.peak for r in plan.rows if r.worker != name)
            limit = (plan.capacity - others) / plan.capacity
            util = args.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION
            if util > limit:
                plan.problems.append(
                    f"workers.{name}.engine_args.gpu_memory_utilization: {util} of "
                    f"{plan.label()} is {util * plan.capacity:.1f} GiB, but a restarted vLLM "
                    f"finds only {plan.capacity - others:.1f} GiB free beside "
                    f"{', '.join(w for w in placed[g] if w != name)}, and refuses to start "
                    f"with less free than that: set at most {int(limit * 100) / 100}")
    return list(plans.values())


def check_plan(plans: list[GpuPlan]) -> None:
    """Raise naming each GPU whose workers' peaks do not fit, and the workers on it; then
    any other problem the plan found."""
    problems = [
        f"gpu: {p.label()}: the workers' peaks add up to {p.peak:.1f} GiB, which leaves "
        f"{p.free:.1f} GiB free where {p.headroom:.1f} GiB of headroom is needed; workers: "
        + ", ".join(f"{r.worker} {r.peak:.1f}" for r in p.rows)
        for p in plans if not p.fits
    ] + [problem for p in plans for problem in p.problems]
    if problems:
        raise ConfigError("\n".join(problems))


def format_plan(plans: list[GpuPlan]) -> str:
    lines = []
    for p in plans:
        lines.append(f"{p.label()}: peak {p.peak:.1f} GiB, free {p.free:.1f} GiB "
                     f"(headroom needed {p.headroom:.1f}): {'fits' if p.fits else 'DOES NOT FIT'}")
        lines.append(f"  {'worker':<15}{'model':<26}{'weights':>9}{'KV/work':>9}{'peak':>8}  note")
        for r in p.rows:
            lines.append(f"  {r.worker:<15}{r.model:<26}{r.weights:>9.1f}{r.working:>9.1f}"
                         f"{r.peak:>8.1f}  {r.note}")
        if not p.rows:
            lines.append("  (no worker)")
    lines.append(f"(GiB; each worker's peak includes {CONTEXT_GIB} GiB of CUDA context)")
    return "\n".join(lines)


def checked_plan(config: Config, where: str) -> str:
    """The memory plan of a CUDA config as a table, checked; a GPU that does not fit is a
    config error naming `where` (the last file given: where an overlay that breaks the plan
    usually is)."""
    try:
        plans = memory_plan(config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    table = format_plan(plans)
    try:
        check_plan(plans)
    except ConfigError as e:
        raise ConfigError(f"{table}\n{where}: {e}") from None
    return table
