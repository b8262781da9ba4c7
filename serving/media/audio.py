"""Speech audio in OpenAI's six formats, encoded incrementally so it can be streamed.

mp3, opus (Ogg, 48 kHz), aac (ADTS) and flac go through PyAV (its wheel bundles FFmpeg with
LAME and libopus). wav and pcm are 16-bit little-endian mono written directly: pcm is OpenAI's
raw 24 kHz stream, and wav's header carries "unknown length" sizes, as OpenAI's streamed wav
does, because the length is not known when the first bytes leave.
"""

from __future__ import annotations

import struct
from typing import Literal

import av
import numpy as np

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
PCM_RATE = 24000
# format -> (container, codec, sample rate it needs or None for the input's)
_PYAV = {
    "mp3": ("mp3", "libmp3lame", None),
    "opus": ("ogg", "libopus", 48000),
    "aac": ("adts", "aac", None),
    "flac": ("flac", "flac", None),
}


class _Sink:
    """A write-only file for PyAV: what the muxer wrote since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out or len(samples) == 0:
        return samples
    n = round(len(samples) * rate_out / rate_in)
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)),
                     samples).astype(np.float32)


class AudioEncoder:
    """Feed float32 mono chunks in order; each call returns the encoded bytes ready so far."""

    def __init__(self, fmt: AudioFormat, sample_rate: int):
        self.format = fmt
        self.rate = sample_rate
        self._container = None
        if fmt in _PYAV:
            container, codec, rate = _PYAV[fmt]
            self._sink = _Sink()
            # Ogg pages are otherwise held back for about a second; 100 ms keeps audio flowing.
            options = {"page_duration": "100000"} if container == "ogg" else {}
            self._container = av.open(self._sink, "w", format=container, options=options)
            self._stream = self._container.add_stream(codec, rate=rate or sample_rate)
            self._stream.layout = "mono"
            self._resampler = av.AudioResampler(
                format=self._stream.format.name, layout="mono", rate=rate or sample_rate)

    def header(self) -> bytes:
        if self.format != "wav":
            return b""
        unknown = 0xFFFFFFFF
        return (b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
                + b"data" + struct.pack("<I", unknown))

    def encode(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:  # an engine can find nothing to voice in a chunk
            return b""
        if self._container is None:
            return _s16(_resample(samples, self.rate, PCM_RATE))
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate = self.rate
        self._mux(self._resampler.resample(frame))
        return self._sink.drain()

    def close(self) -> bytes:
        if self._container is None:
            return b""
        self._mux(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.drain()

    def _mux(self, frames: list) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
