"""POST /v1/images/generations: OpenAI's request shape, checked against the model's catalog entry
(edits add their input image: serving.protocol.image_edits).

Shared by the router (which rejects bad requests before they reach a GPU) and the image worker
(which speaks the same shape, so it can be called on its own).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.config.catalog import ImageOptions
from serving.errors import invalid_request

SEED_MAX = 2**63 - 1


def random_seed() -> int:
    """A seed for a request that named none, so its output can still be reproduced."""
    return secrets.randbelow(SEED_MAX + 1)


class ImageFields(BaseModel):
    """What generations and edits (serving.protocol.image_edits) both take; edits come as
    multipart strings, so only generations are strict."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str = Field(min_length=1)
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    user: str | None = Field(default=None, max_length=256)
    # Accepted for compatibility; they do not change what a diffusion model does.
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = None
    background: Literal["auto", "opaque"] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    # Extensions.
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


class ImageGenerationRequest(ImageFields):
    model_config = ConfigDict(extra="forbid", strict=True)

    style: Literal["vivid", "natural"] | None = None
    moderation: Literal["auto", "low"] | None = None
    stream: Literal[False] | None = None


@dataclass(frozen=True)
class ImageParams:
    """A validated request, in the pipeline's terms."""

    prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int | None
    # Edits: the input image, decoded to RGB in the worker (an editor's pipeline takes it).
    image: Any = None

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with the same key can share one pipeline call. The worker resizes an
        edit's input to the output size, so edits of one size batch together (apart from
        generations: a pipeline call either takes input images or does not)."""
        return self.width, self.height, self.steps, self.guidance, self.image is not None


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


def check_range(name: str, value: float | None, default: float, low: float, high: float):
    if value is None:
        return default
    if not low <= value <= high:
        raise invalid_request(
            f"Invalid value for '{name}': {value} is outside [{low}, {high}] for this model.",
            param=name, code="invalid_value",
        )
    return value


def check_prompt(prompt: str, max_chars: int) -> str:
    if not prompt.strip():
        raise invalid_request("'prompt' must not be empty.", param="prompt", code="invalid_value")
    if len(prompt) > max_chars:
        raise invalid_request(
            f"'prompt' is {len(prompt)} characters; this model takes at most {max_chars}.",
            param="prompt", code="string_above_max_length",
        )
    return prompt


def check_size(size: str | None, sizes: list[str], default: str) -> tuple[int, int]:
    if size in (None, "auto"):
        return parse_size(default)
    if size not in sizes:
        raise invalid_request(
            f"Invalid value for 'size': '{size}'. Supported sizes for this model: "
            f"{', '.join(sizes)}.", param="size", code="invalid_value",
        )
    return parse_size(size)


def resolve_image_request(req: ImageFields, options: ImageOptions) -> ImageParams:
    """The pipeline parameters for `req`, or a 400 naming the first bad field."""
    if req.response_format == "url":
        raise invalid_request(
            "response_format 'url' is not supported; images are returned as b64_json.",
            param="response_format", code="unsupported_value",
        )
    if req.output_format not in (None, "png"):
        raise invalid_request("Only output_format 'png' is supported.", param="output_format",
                              code="unsupported_value")
    n = req.n or 1
    if n > options.max_n:
        raise invalid_request(f"Invalid value for 'n': this model makes at most "
                              f"{options.max_n} images per request.", param="n",
                              code="invalid_value")
    width, height = check_size(req.size, options.sizes, options.default_size)
    steps = options.num_inference_steps
    guidance = options.guidance_scale
    return ImageParams(
        prompt=check_prompt(req.prompt, options.max_prompt_chars),
        n=n,
        width=width,
        height=height,
        steps=int(check_range("num_inference_steps", req.num_inference_steps, steps.default,
                              steps.min, steps.max)),
        guidance=float(check_range("guidance_scale", req.guidance_scale, guidance.default,
                                   guidance.min, guidance.max)),
        seed=req.seed,
    )


def image_usage(text_tokens: int, images: int) -> dict[str, int | dict[str, int]]:
    """OpenAI's ImageGenUsage, plus this API's cache fields (always 0 for diffusion models)
    and the image count the ledger bills."""
    return {
        "input_tokens": text_tokens,
        "output_tokens": 0,
        "total_tokens": text_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "images": images,
    }
