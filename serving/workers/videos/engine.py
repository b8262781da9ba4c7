"""Render one video: denoise, decode, encode to MP4, reporting progress each step."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.media.video import encode_mp4
from serving.protocol.videos import VideoParams
from serving.workers.diffusion import Cancelled, generator, step_callback

# Denoising is most of the work; decoding and encoding take the last few percent.
DENOISE_SHARE = 95


class VideoEngine:
    def __init__(self, pipe: Any):
        self.pipe = pipe
        self._lock = threading.Lock()  # the pipeline is not thread-safe: one render at a time

    def render(self, params: VideoParams, output: Path, on_progress: Callable[[int], None],
               is_cancelled: Callable[[], bool]) -> int:
        """Write the MP4 to `output` (atomically) and return its frame count."""
        with self._lock:
            if is_cancelled():
                raise Cancelled

            def on_step(step: int) -> None:
                if is_cancelled():
                    raise Cancelled
                on_progress(DENOISE_SHARE * step // params.steps)

            try:
                frames = self.pipe(
                    prompt=params.prompt,
                    width=params.width,
                    height=params.height,
                    num_frames=params.num_frames,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance,
                    generator=generator(params.seed),
                    output_type="np",
                    callback_on_step_end=step_callback(on_step),
                ).frames[0]
            except BaseException:
                # The pipeline offloads its components only at the end of a call it finishes;
                # one stopped mid-way would keep the transformer on the GPU until the next.
                self.pipe.maybe_free_model_hooks()
                raise
        tmp = output.with_name(output.name + ".part")
        encode_mp4(frames, params.fps, tmp)
        tmp.replace(output)
        return len(frames)
