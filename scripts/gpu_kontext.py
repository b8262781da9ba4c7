"""A full-size FLUX.1 Kontext [dev] edit on a GPU, measured against the memory plan.

No hub on a lent GPU box, so the pipeline is built from FLUX.1 [dev]'s architecture with random
weights (speed and memory do not depend on the values): the 12B transformer with its guidance
embedding, T5-XXL, CLIP-L and the 16-channel VAE, in bf16, with the tiny tokenizers of
serving.weights.tiny (T5 still encodes its 512 padded tokens). It runs through the project's
own ImageEngine, as the worker would: an edit at 1024x1024 with the catalog's steps, a batch of
the catalog's `max_batch_size`, then the same pipeline offloaded (`offload: model`, as
configs/gpu-h200.yaml runs it). Each result carries the peak reserved memory beside the plan
`serving config check` computes for that setting (plus the CUDA context the plan adds).

    python3 scripts/gpu_check.py kontext                # on the GPU box (~4 minutes)
    python3 scripts/gpu_check.py kontext --device cpu   # here: the same logic, tiny weights
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
MODEL = "flux.1-kontext-dev"


def full_size_components(device: str) -> dict[str, Any]:
    """FLUX.1 [dev]'s components with random bf16 weights, built on `device`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from serving.weights.tiny import build_clip_tokenizer, build_t5_tokenizer

    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(guidance_embeds=True)  # defaults: FLUX.1
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=1024,
                use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                scaling_factor=0.3611)
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072,
                num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=768))
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                num_heads=64, relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu", dropout_rate=0.0))
    finally:
        torch.set_default_dtype(before)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "tokenizer": build_clip_tokenizer(),
            "tokenizer_2": build_t5_tokenizer(512), "scheduler": scheduler}


def planned_peak(offload: str, batch: int) -> float:
    """The GPU peak `serving config check` plans for the editor alone with these settings."""
    from serving.config import load_config
    from serving.config.plan import memory_plan

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kontext.yaml"
        path.write_text(
            f"device: cuda\ncatalog_dir: {ROOT / 'models'}\n"
            "gpu: {kind: H200, count: 1, memory_gib: 139.8}\n"
            f"workers:\n  edits: {{model: {MODEL}, gpus: [0], engine_args: "
            f"{{offload: {offload}, max_batch_size: {batch}}}}}\n")
        (plan,) = memory_plan(load_config([path]))
    (row,) = plan.rows
    return round(row.peak, 2)


def kontext_checks(check: Callable[[str, Callable[[], dict | None]], bool], device: str,
                   steps: int | None = None) -> None:
    """Register the checks with gpu_check's `check` (PASS/FAIL, JSON report)."""
    import torch
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from serving.config import load_catalog
    from serving.protocol.images import ImageParams
    from serving.weights.tiny import flux_components
    from serving.workers.images.engine import ImageEngine

    entry = load_catalog(ROOT / "models")[MODEL]
    assert entry.image is not None
    cuda = device == "cuda"
    size = 1024 if cuda else 128
    steps = steps or (entry.image.num_inference_steps.default if cuda else 2)
    batch = entry.engine_defaults.get("max_batch_size", 1)
    state: dict[str, Any] = {}

    def peak() -> float:
        return round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else 0.0

    def edit(n_jobs: int) -> dict[str, Any]:
        engine: ImageEngine = state["engine"]
        picture = Image.new("RGB", (size, size), (90, 120, 200))
        jobs = [engine.new_job(ImageParams(prompt="make the sky red", n=1, width=size,
                                           height=size, steps=steps,
                                           guidance=entry.image.guidance_scale.default,
                                           seed=i, image=picture)) for i in range(n_jobs)]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        engine.generate(jobs)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert all(job.images[0].startswith(b"\x89PNG") for job in jobs)
        return {"size": f"{size}x{size}", "steps": steps, "images": n_jobs,
                "edit_s": round(seconds, 2), "images_per_s": round(n_jobs / seconds, 3),
                "seconds_per_step": round(seconds / steps, 3)}

    def build() -> dict[str, Any]:
        components = (full_size_components(device) if cuda
                      else flux_components(0, guidance_embeds=True))
        pipe = FluxKontextPipeline(**components, image_encoder=None, feature_extractor=None)
        pipe.set_progress_bar_config(disable=True)
        state["engine"] = ImageEngine(pipe)
        params = sum(p.numel() for p in pipe.transformer.parameters())
        _warm(state["engine"], size)
        return {"transformer_params_b": round(params / 1e9, 2),
                "allocated_gib": round(torch.cuda.memory_allocated() / GIB, 2) if cuda else 0}

    def whole(n: int) -> dict[str, Any]:
        facts = edit(n)
        return {**facts, "peak_reserved_gib": peak(),
                "plan_gib": planned_peak("none", n)}

    def offloaded() -> dict[str, Any]:
        engine: ImageEngine = state["engine"]
        if cuda:
            engine.pipe.enable_model_cpu_offload()
            torch.cuda.empty_cache()
        facts = edit(1)
        return {**facts, "peak_reserved_gib": peak(), "plan_gib": planned_peak("model", 1)}

    if check(f"full-size {MODEL} (random weights) built on {device}", build):
        check(f"one edit, {size}x{size}, {steps} steps, whole on the GPU", lambda: whole(1))
        if batch > 1:
            check(f"a batch of {batch} edits, whole on the GPU", lambda: whole(batch))
        check("one edit with offload: model (as gpu-h200.yaml)", offloaded)


def _warm(engine: Any, size: int) -> None:
    """One step at the full size, so the measured runs do not pay for first-call set-up."""
    from PIL import Image

    from serving.protocol.images import ImageParams

    picture = Image.new("RGB", (size, size))
    engine.generate([engine.new_job(ImageParams(prompt="warm", n=1, width=size, height=size,
                                                steps=1, guidance=2.5, seed=0,
                                                image=picture))])
