"""Run one diffusers pipeline call (text-to-image, or edits of input images) for a batch."""

from __future__ import annotations

import inspect
import io
from dataclasses import dataclass, field
from typing import Any

from serving.protocol.images import ImageParams, random_seed
from serving.workers.diffusion import Cancelled, generator, step_callback


@dataclass(eq=False)
class ImageJob:
    params: ImageParams
    seed: int
    # Set from the event loop when the client leaves or the deadline passes; read by the
    # pipeline thread at each step.
    cancelled: bool = False
    images: list[bytes] = field(default_factory=list)


class ImageEngine:
    """Owns the pipeline. Not thread-safe, like the pipeline: the batcher calls it serially."""

    def __init__(self, pipe: Any, max_sequence_length: int | None = None):
        self.pipe = pipe
        # Unset: the pipeline's default (512 for FLUX; schnell was trained on 256).
        self.extra = {} if max_sequence_length is None else {
            "max_sequence_length": max_sequence_length}
        # FLUX's main text encoder is T5 (tokenizer_2); CLIP only pools.
        self.tokenizer = getattr(pipe, "tokenizer_2", None) or getattr(pipe, "tokenizer", None)
        # Kontext scales its output to `max_area` (default 1024x1024) and snaps the input to its
        # preferred resolutions unless told otherwise: the size asked for is the size made.
        self.pins_area = "max_area" in inspect.signature(pipe.__call__).parameters

    def new_job(self, params: ImageParams) -> ImageJob:
        return ImageJob(params, params.seed if params.seed is not None else random_seed())

    def generate(self, jobs: list[ImageJob]) -> None:
        """Fill each job's `images` with PNG bytes; raise Cancelled if every job is cancelled.

        Image i of a job is seeded with `seed + i`, so a seed reproduces its images exactly
        and the n images of one request differ.
        """
        first = jobs[0].params
        prompts, generators, inputs = [], [], []
        for job in jobs:
            for i in range(job.params.n):
                prompts.append(job.params.prompt)
                generators.append(generator(job.seed + i))
                inputs.append(job.params.image)
        # One input per output image, at the output's size: the pipeline then makes the size
        # asked for, and edits of any input size batch together.
        edit = {} if first.image is None else {
            "image": [_fit(image, first.width, first.height) for image in inputs]}

        def on_step(_: int) -> None:
            if all(job.cancelled for job in jobs):
                raise Cancelled

        images = self.pipe(
            prompt=prompts,
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            generator=generators,
            output_type="pil",
            callback_on_step_end=step_callback(on_step),
            **self.extra,
            **edit,
            **({"max_area": first.width * first.height, "_auto_resize": False}
               if self.pins_area else {}),
        ).images
        it = iter(images)
        for job in jobs:
            job.images = [_png(next(it)) for _ in range(job.params.n)]


def _fit(image: Any, width: int, height: int) -> Any:
    from PIL import Image

    return image if image.size == (width, height) else image.resize(
        (width, height), Image.Resampling.LANCZOS)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
