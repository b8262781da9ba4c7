"""Loading a diffusers pipeline the way the config says, and the hooks every pipeline shares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from serving.config.hardware import resolve_dtype
from serving.protocol.images import SEED_MAX
from serving.workers.spec import MediaWorkerSpec

log = logging.getLogger("serving.workers")


class Cancelled(Exception):
    """Raised from a step callback: diffusers stops at once and the pipeline stays usable."""


def load_pipeline(spec: MediaWorkerSpec) -> Any:
    import diffusers
    import torch

    args = spec.args
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = resolve_dtype(args.dtype, spec.device, cuda_auto="bfloat16")
    dtype = getattr(torch, dtype_name)
    extra: dict[str, Any] = {}
    if args.vae_dtype and args.vae_dtype != dtype_name:
        vae_class = (diffusers.AutoencoderKLWan if args.pipeline == "WanPipeline"
                     else diffusers.AutoencoderKL)
        extra["vae"] = vae_class.from_pretrained(spec.model_path, subfolder="vae",
                                                 torch_dtype=getattr(torch, args.vae_dtype))
    pipe = getattr(diffusers, args.pipeline).from_pretrained(
        spec.model_path, torch_dtype=dtype, **extra)
    if spec.device == "cuda":
        if args.offload == "model":
            pipe.enable_model_cpu_offload()
        elif args.offload == "sequential":
            pipe.enable_sequential_cpu_offload()
        else:
            pipe.to("cuda")
        if args.compile:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
    if args.vae_slicing:
        pipe.vae.enable_slicing()
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    log.info("%s: loaded %s (%s) from %s", spec.name, args.pipeline, dtype_name,
             spec.model_path)
    return pipe


def generator(seed: int) -> Any:
    """A CPU generator: the same seed gives the same latents on any device."""
    import torch

    return torch.Generator("cpu").manual_seed(seed % (SEED_MAX + 1))


def step_callback(on_step: Callable[[int], None]) -> Callable[..., dict]:
    """A `callback_on_step_end` that reports each finished step; `on_step` may raise Cancelled."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        on_step(step + 1)
        return {}

    return callback


def prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """Text tokens the prompt costs, as the model's main text encoder counts them."""
    if tokenizer is None:
        return 0
    return len(tokenizer(prompt, truncation=False).input_ids)
