"""The GPU memory plan: every shipped GPU config fits its GPUs; one that does not names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli import main
from serving.config import ConfigError, load_config
from serving.config.plan import check_plan, memory_plan, parse_bytes

ROOT = Path(__file__).resolve().parent.parent
GPU_CONFIGS = sorted((ROOT / "configs").glob("gpu-*.yaml"))


def overlay(tmp: Path, text: str) -> Path:
    path = tmp / "overlay.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_every_gpu_config_prints_a_plan_that_fits(config: Path,
                                                  capsys: pytest.CaptureFixture[str]):
    assert main(["config", "check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    cfg = load_config([config])
    plans = memory_plan(cfg, devices=[])
    for plan in plans:
        assert f"{plan.label()}: peak {plan.peak:.1f} GiB" in out
        assert plan.free >= cfg.gpu.headroom_gib
    on_gpu = {row.worker for plan in plans for row in plan.rows}
    assert {"chat", "images", "videos", "transcription"} <= on_gpu


def test_the_old_h100_plan_fails_naming_the_gpu_and_its_workers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # What gpu-h100.yaml was: 35% for chat, FLUX decoding a batch of 4 unsliced, Kokoro on GPU.
    bad = overlay(tmp_path, """
workers:
  chat: {engine_args: {kv_cache_memory_bytes: 11G, gpu_memory_utilization: 0.1}}
  images: {engine_args: {vae_slicing: false}}
  speech: {gpus: [0], engine_args: {providers: [CUDAExecutionProvider]}}
""")
    assert main(["config", "check", "-c", str(ROOT / "configs" / "gpu-h100.yaml"),
                 "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: gpu: GPU 0 (H100 80GB, 79.6 GiB)" in err
    for worker in ("chat", "images", "videos", "transcription", "speech"):
        assert f"{worker} " in err.split("workers:")[1]


def test_a_vllm_worker_on_a_shared_gpu_needs_an_explicit_kv_cache(tmp_path: Path):
    unsized = overlay(tmp_path, "workers: {chat: {engine_args: {kv_cache_memory_bytes: null}}}")
    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml", unsized])
    with pytest.raises(ConfigError, match=r"workers\.chat\.engine_args\.kv_cache_memory_bytes"):
        memory_plan(cfg, devices=[])


def test_a_restarted_vllm_worker_must_find_its_share_free(tmp_path: Path):
    greedy = overlay(tmp_path, "workers: {chat: {engine_args: {gpu_memory_utilization: 0.5}}}")
    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml", greedy])
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization: 0.5 of GPU 0 .* at most 0.3"):
        check_plan(memory_plan(cfg, devices=[]))


def test_capacity_comes_from_the_device_when_the_config_has_none(tmp_path: Path):
    unset = overlay(tmp_path, "gpu: {memory_gib: null}")
    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml", unset])
    with pytest.raises(ConfigError, match=r"gpu\.memory_gib: unset, and no GPU 0"):
        memory_plan(cfg, devices=[])
    plan, = memory_plan(cfg, devices=[("NVIDIA H200", 139.8)])
    assert plan.label() == "GPU 0 (NVIDIA H200, 139.8 GiB)"
    check_plan([plan])


def test_a_worker_on_a_gpu_the_config_does_not_have(tmp_path: Path):
    far = overlay(tmp_path, "workers: {images: {gpus: [3]}}")
    cfg = load_config([ROOT / "configs" / "gpu-h100.yaml", far])
    with pytest.raises(ConfigError, match=r"workers\.images\.gpus: GPU 3"):
        memory_plan(cfg, devices=[])


@pytest.mark.parametrize("text", ["5G", "5g", "512M", "1.5g", "64G", "2048"])
def test_sizes_read_as_vllm_reads_them(text: str):
    from vllm.utils.argparse_utils import human_readable_int

    assert parse_bytes(text) == human_readable_int(text)


@pytest.mark.parametrize("size", ["2Gi", "1.5G", "5 GB"])
def test_a_kv_size_vllm_would_refuse_fails_at_load(size: str, tmp_path: Path):
    bad = overlay(tmp_path, "workers: {chat: {engine_args: {kv_cache_memory_bytes: SIZE}}}"
                  .replace("SIZE", repr(size)))
    with pytest.raises(ConfigError, match=r"workers\.chat\.engine_args\.kv_cache_memory_bytes"):
        load_config([ROOT / "configs" / "gpu-h100.yaml", bad])
