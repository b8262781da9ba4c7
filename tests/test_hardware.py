"""The dtype `auto` picks: bf16 only on CPUs that compute it natively, float32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import hardware, load_config
from serving.config.hardware import (
    cpu_dtype,
    cpu_flags,
    describe_cpu,
    resolve_dtype,
    vllm_cpu_env,
)
from serving.launcher.worker_set import worker_specs

ROOT = Path(__file__).resolve().parent.parent
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}  # AVX-512 without bf16 math
SAPPHIRE_RAPIDS = AVX512 | {"avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN4 = AVX512 | {"avx512_bf16"}


@pytest.mark.parametrize(("flags", "expected"), [
    (AVX2, "float32"), (AVX512, "float32"), (ZEN4, "bfloat16"), (SAPPHIRE_RAPIDS, "bfloat16"),
    (frozenset(), "float32"),
])
def test_cpu_dtype_follows_native_bf16(flags: frozenset[str], expected: str) -> None:
    assert cpu_dtype(flags) == expected
    assert resolve_dtype("auto", "cpu", flags=flags) == expected
    assert f"cpu_dtype={expected}" in describe_cpu(flags)


def test_an_explicit_dtype_wins_and_cuda_has_its_own_auto() -> None:
    assert resolve_dtype("bfloat16", "cpu", flags=AVX2) == "bfloat16"
    assert resolve_dtype("float32", "cpu", flags=SAPPHIRE_RAPIDS) == "float32"
    assert resolve_dtype("auto", "cuda", flags=AVX2) == "auto"  # vLLM: the checkpoint's dtype
    assert resolve_dtype("auto", "cuda", cuda_auto="bfloat16", flags=AVX2) == "bfloat16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "flags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse4_2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(("flags", "expected"), [(AVX2, "float32"),
                                                 (SAPPHIRE_RAPIDS, "bfloat16")])
def test_cpu_default_chat_worker_gets_the_cpu_dtype(flags, expected, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    cfg = load_config([ROOT / "configs" / "cpu.yaml"])
    assert cfg.workers["chat"].args.dtype == "auto"
    spec = next(s for s in worker_specs(cfg, {n: Path("/m") for n in cfg.workers})
                if s.name == "chat")
    assert spec.argv[spec.argv.index("--dtype") + 1] == expected


def test_a_config_dtype_overrides_auto(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2)
    overlay = tmp_path / "bf16.yaml"
    overlay.write_text("workers: {chat: {engine_args: {dtype: bfloat16}}}\n")
    cfg = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    spec = next(s for s in worker_specs(cfg, {n: Path("/m") for n in cfg.workers})
                if s.name == "chat")
    assert spec.argv[spec.argv.index("--dtype") + 1] == "bfloat16"


def test_a_small_cpu_keeps_no_core_back_from_vllm(tmp_path: Path, monkeypatch) -> None:
    assert vllm_cpu_env(2) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert vllm_cpu_env(1) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert vllm_cpu_env(8) == {}  # vLLM's own split: one core for its server and scheduler
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})  # a 2-core box
    cfg = load_config([ROOT / "configs" / "cpu.yaml"])
    chat = next(s for s in worker_specs(cfg, {n: Path("/m") for n in cfg.workers})
                if s.name == "chat")
    assert chat.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    overlay = tmp_path / "reserve.yaml"  # the config's own setting wins
    overlay.write_text("workers: {chat: {env: {VLLM_CPU_NUM_OF_RESERVED_CPU: '1'}}}\n")
    cfg = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    chat = next(s for s in worker_specs(cfg, {n: Path("/m") for n in cfg.workers})
                if s.name == "chat")
    assert chat.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    gpu = load_config([ROOT / "configs" / "gpu-h100.yaml"])
    chat = next(s for s in worker_specs(gpu, {n: Path("/m") for n in gpu.workers})
                if s.name == "chat")
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in chat.env
