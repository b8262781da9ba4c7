"""One real inference per media worker at start, before /health answers 200.

A model that loads is not a model that works: CUDA libraries are loaded lazily (ctranslate2
opens cuBLAS at its first matrix product, not at load), kernels compile on first use, and a
pipeline can fail on its first call for reasons its load never checks. So each worker runs the
cheapest real request it serves (one image step at the smallest size, an edit on an editor, one
video step, one spoken word, a second of silence transcribed) inside its lifespan; if that
raises, the worker exits, the launcher reports its log, and `/ready` never turns green on a
broken engine.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.config.catalog import ModelEntry

log = logging.getLogger("serving.workers")

WARMUP_PROMPT = "a red circle"


def smallest_size(sizes: list[str]) -> tuple[int, int]:
    def area(size: str) -> int:
        w, h = map(int, size.split("x"))
        return w * h

    width, height = map(int, min(sizes, key=area).split("x"))
    return width, height


def _timed(name: str, what: str, run: Callable[[], Any]) -> Any:
    start = time.monotonic()
    result = run()
    log.info("%s: warm-up: %s in %.2f s", name, what, time.monotonic() - start)
    return result


def warm_up_images(name: str, engine: Any, entry: ModelEntry, max_batch: int | None = None
                   ) -> None:
    """One image at the smallest size, one step; an editor edits a grey picture instead, so
    the path that encodes an input image has run too.

    `max_batch` (set when the transformer is compiled): one call for every size the catalog
    allows and every batch of 1 to `max_batch` images instead. A compiled graph is specialised
    to its shapes, and each new one recompiles on the request that first meets it (16-17 s for
    FLUX at 1024x1024 on an H200), so every shape a request can bring is compiled here,
    before /health answers 200."""
    assert entry.image is not None
    if max_batch is None:
        shapes = [(smallest_size(entry.image.sizes), 1)]
    else:
        sizes = [tuple(map(int, size.split("x"))) for size in entry.image.sizes]
        shapes = [(size, batch) for size in sizes for batch in range(1, max_batch + 1)]
    for (width, height), batch in shapes:
        _warm_up_one_call(name, engine, entry, width, height, batch)


def _warm_up_one_call(name: str, engine: Any, entry: ModelEntry, width: int, height: int,
                      batch: int) -> None:
    from PIL import Image

    from serving.protocol.images import ImageParams

    assert entry.image is not None
    edits = "edits" in entry.capabilities
    image = Image.new("RGB", (width, height), (128, 128, 128)) if edits else None
    jobs = [engine.new_job(ImageParams(prompt=WARMUP_PROMPT, n=1, width=width, height=height,
                                       steps=1, guidance=entry.image.guidance_scale.default,
                                       seed=0, image=image)) for _ in range(batch)]
    what = (f"{'an edit of ' if edits else ''}{batch} {width}x{height} "
            f"image{'s' if batch > 1 else ''}, 1 step")
    _timed(name, what, lambda: engine.generate(jobs))
    if any(len(job.images) != 1 or not job.images[0] for job in jobs):
        raise RuntimeError("the warm-up image came back empty")


def warm_up_video(name: str, engine: Any, entry: ModelEntry) -> None:
    from serving.protocol.videos import VideoParams, frames_for

    assert entry.video is not None
    width, height = smallest_size(entry.video.sizes)
    fps = entry.video.fps.min
    seconds = min(map(int, entry.video.seconds))
    params = VideoParams(prompt=WARMUP_PROMPT, width=width, height=height, seconds=seconds,
                         fps=fps, num_frames=frames_for(seconds, fps), steps=1,
                         guidance=entry.video.guidance_scale.default, seed=0)
    with tempfile.TemporaryDirectory(prefix="serving-warmup-") as tmp:
        out = Path(tmp) / "warmup.mp4"
        _timed(name, f"one {width}x{height} clip of {params.num_frames} frames, 1 step",
               lambda: engine.render(params, out, lambda _: None, lambda: False))
        if out.stat().st_size == 0:
            raise RuntimeError("the warm-up video came back empty")


def warm_up_speech(name: str, engine: Any, entry: ModelEntry) -> None:
    assert entry.speech is not None
    samples = _timed(name, "one spoken word",
                     lambda: engine.synthesize("Hello.", entry.speech.default_voice, 1.0))
    if len(samples) == 0:
        raise RuntimeError("the warm-up speech came back empty")


def warm_up_transcription(name: str, transcribe: Callable[[Any], Any]) -> None:
    import numpy as np

    from serving.workers.transcription.engine import SAMPLE_RATE

    _timed(name, "a second of silence transcribed",
           lambda: transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32)))
