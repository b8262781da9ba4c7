"""What the machine can do, where it decides how a model runs.

On CPU the right dtype depends on the CPU, not on the model: bf16 halves memory traffic, but
only CPUs with native bf16 math (AVX512-BF16 or AMX) compute it; on an AVX2-only CPU vLLM and
PyTorch emulate it (vLLM logs "Failed to create oneDNN linear, fallback to torch linear"), and
float32 serves several times more tokens. Measured on a 2-core AVX2 machine with SmolLM2-135M
(docs/benchmarks.md): bf16 13.8 tok/s at 1 stream and 23.5 at 16, float32 18.9 and 86.9.

So a config says `dtype: auto` (the default) and the launcher resolves it here, per machine;
an explicit dtype in a config always wins.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

AUTO = "auto"
# CPU features that make bf16 matrix math native rather than emulated.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing or has none)."""
    try:
        with cpuinfo.open() as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    return not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags() if flags is None else flags)


def cpu_dtype(flags: frozenset[str] | None = None) -> str:
    """bf16 where the CPU computes it natively, float32 everywhere else."""
    return "bfloat16" if cpu_has_native_bf16(flags) else "float32"


def resolve_dtype(dtype: str, device: str, *, cuda_auto: str = AUTO,
                  flags: frozenset[str] | None = None) -> str:
    """The dtype a worker runs: `dtype` as configured unless it is `auto`.

    `auto` on CPU follows the CPU's flags; on CUDA it is `cuda_auto` (vLLM's own `auto`, the
    checkpoint's dtype; bf16 for diffusers, which has no such default).
    """
    if dtype != AUTO:
        return dtype
    return cpu_dtype(flags) if device == "cpu" else cuda_auto


# vLLM's CPU backend binds its engine's OpenMP threads to all cores but one, which it keeps
# for its API server and scheduler. On a 2-core machine that halves the compute: measured with
# SmolLM2-135M (docs/benchmarks.md), using both cores served 1.45x the tokens at 16 streams
# in float32 and 1.06x in bf16, with a lower TTFT. Above that size vLLM's split stands.
SMALL_CPU_CORES = 2


def vllm_cpu_env(cores: int | None = None) -> dict[str, str]:
    """Environment for a vLLM CPU worker: on a small machine, no core held back."""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} if cores <= SMALL_CPU_CORES else {}


def describe_cpu(flags: frozenset[str] | None = None) -> str:
    """One line for logs and CI: the vector extensions present and the dtype `auto` picks."""
    flags = cpu_flags() if flags is None else flags
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"flags={','.join(shown) or 'none'} cpu_dtype={cpu_dtype(flags)}"


def vllm_cpu_binding(replica: int, replicas: int,
                     cores: list[int] | None = None) -> dict[str, str]:
    """Cores for replica `replica` of `replicas` local vLLM CPU workers.

    vLLM's `auto` binding picks cores without knowing about the other replicas on the node, so
    two replicas both land on the same core (core 0 on a 2-core machine) and serve no more
    than one. Each replica gets its own slice of the cores this process may use instead; with
    fewer cores than replicas, they take the cores in turn. One replica keeps vLLM's choice.
    """
    if replicas <= 1:
        return {}
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    share = max(1, len(cores) // replicas)
    start = replica * share % len(cores)
    mine = cores[start:start + share]
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, mine))}
