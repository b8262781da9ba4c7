"""Frames to an H.264 MP4 with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """diffusers' `output_type="np"` frames are floats in [0, 1]."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int, path: Path) -> None:
    """Write (T, H, W, 3) frames as a yuv420p H.264 MP4 that browsers and players accept."""
    frames = to_uint8(frames)
    _, height, width, _ = frames.shape
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
