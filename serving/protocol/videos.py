"""Video generation requests (OpenAI's /v1/videos shape), checked against the catalog entry.

Video is asynchronous: the router validates and stores a job, the video worker renders it.
`VideoParams` is what travels from one to the other and what is stored, so a job re-rendered
after a restart is the same job (the seed is fixed at creation).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.config.catalog import VideoOptions
from serving.errors import invalid_request
from serving.protocol.images import SEED_MAX, check_prompt, check_range, check_size


class VideoCreateRequest(BaseModel):
    # Not strict: multipart form fields arrive as strings ("42" is a fine seed there).
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str = Field(min_length=1)
    size: str | None = None
    seconds: str | int | None = None
    input_reference: Any = None
    # Extensions.
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    fps: int | None = None
    num_inference_steps: int | None = None


class VideoParams(BaseModel):
    prompt: str
    width: int
    height: int
    seconds: int
    fps: int
    num_frames: int
    steps: int
    guidance: float
    seed: int


def frames_for(seconds: int, fps: int) -> int:
    """Video diffusion models (Wan) take 4k + 1 frames: the nearest such count."""
    return 4 * max(1, round(seconds * fps / 4)) + 1


def resolve_video_request(req: VideoCreateRequest, options: VideoOptions,
                          seed: int) -> VideoParams:
    """The render parameters for `req` (with `seed` if it names none), or a 400."""
    if req.input_reference is not None:
        raise invalid_request("input_reference (image-to-video) is not supported.",
                              param="input_reference", code="unsupported_parameter")
    seconds = options.default_seconds if req.seconds is None else str(req.seconds)
    if seconds not in options.seconds:
        raise invalid_request(
            f"Invalid value for 'seconds': '{seconds}'. Supported durations for this model: "
            f"{', '.join(options.seconds)}.", param="seconds", code="invalid_value")
    width, height = check_size(req.size, options.sizes, options.default_size)
    fps = int(check_range("fps", req.fps, options.fps.default, options.fps.min,
                          options.fps.max))
    steps = options.num_inference_steps
    return VideoParams(
        prompt=check_prompt(req.prompt, options.max_prompt_chars),
        width=width,
        height=height,
        seconds=int(seconds),
        fps=fps,
        num_frames=frames_for(int(seconds), fps),
        steps=int(check_range("num_inference_steps", req.num_inference_steps, steps.default,
                              steps.min, steps.max)),
        guidance=options.guidance_scale.default,
        seed=req.seed if req.seed is not None else seed,
    )
