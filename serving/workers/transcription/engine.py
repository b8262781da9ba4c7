"""faster-whisper, and Whisper's output in OpenAI's response formats."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.config.engines import WhisperArgs
from serving.errors import invalid_request
from serving.protocol.audio import TranscriptionParams

SAMPLE_RATE = 16000
WINDOW_S = 30  # Whisper hears 30 s at a time

log = logging.getLogger("serving.workers.transcription")


def decode(data: bytes) -> np.ndarray:
    """16 kHz mono float32 from any container PyAV reads; bad audio is a 400, not a 500."""
    import av
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as e:
        raise invalid_request(f"The audio file could not be decoded: {e}", param="file",
                              code="invalid_audio") from None
    if audio.size == 0:
        raise invalid_request("The audio file has no audio in it.", param="file",
                              code="invalid_audio")
    return audio


@dataclass
class Transcript:
    language: str
    duration: float
    segments: list[dict[str, Any]]
    words: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return "".join(s["text"] for s in self.segments).strip()

    def usage(self) -> dict[str, Any]:
        return {"type": "duration", "seconds": math.ceil(self.duration)}


def preload_cublas12() -> None:
    """Load the cuBLAS 12 that pip's `nvidia-cublas-cu12` installs, where it is installed.

    ctranslate2's CUDA build links the CUDA 12 runtime statically but opens `libcublas.so.12`
    by name at its first matrix product; beside vLLM's CUDA 13 there is no such file on the
    loader's path. Once loaded here, the dynamic loader matches that later open by soname to
    this copy (as torch does with its own pip CUDA libraries).
    """
    import ctypes
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("nvidia.cublas")
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return  # the system's own cuBLAS 12, if any, is found the usual way
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    for name in ("libcublasLt.so.12", "libcublas.so.12"):
        if (lib / name).exists():
            ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)


class Transcriber:
    def __init__(self, model_path: str, args: WhisperArgs, device: str):
        from faster_whisper import BatchedInferencePipeline, WhisperModel
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        # LANGUAGES: Whisper's language names ("english"), which verbose_json reports.
        if device == "cuda":
            preload_cublas12()
        self.args = args
        self.model = WhisperModel(model_path, device=device, compute_type=args.compute_type,
                                  cpu_threads=args.cpu_threads, num_workers=args.num_workers)
        self.batched = BatchedInferencePipeline(self.model) if args.batch_size > 1 else None
        self.language_names: dict[str, str] = LANGUAGES

    def transcribe(self, audio: np.ndarray, params: TranscriptionParams):
        """Yield segments as Whisper finishes them; the Transcript is the generator's value."""
        options = {"language": params.language, "initial_prompt": params.prompt,
                   "temperature": params.temperature, "beam_size": self.args.beam_size,
                   "word_timestamps": params.words}
        if self.batched is not None and len(audio) > WINDOW_S * SAMPLE_RATE:
            log.info("transcribing %.0f s of audio in windows, %d at a time",
                     len(audio) / SAMPLE_RATE, self.args.batch_size)
            segments, info = self.batched.transcribe(
                audio, vad_filter=True, batch_size=self.args.batch_size, **options)
        else:
            segments, info = self.model.transcribe(audio, vad_filter=self.args.vad_filter,
                                                   **options)
        out, words = [], []
        for i, s in enumerate(segments):
            segment = {
                "id": i,  # OpenAI counts from 0, faster-whisper from 1
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            out.append(segment)
            words += [{"word": w.word.strip(), "start": w.start, "end": w.end}
                      for w in s.words or []]
            yield segment
        return Transcript(self.language_names.get(info.language, info.language), info.duration,
                          out, words)


def _timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(t: Transcript) -> str:
    return "\n".join(
        f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n"
        f"{s['text'].strip()}\n" for i, s in enumerate(t.segments, 1))


def to_vtt(t: Transcript) -> str:
    return "WEBVTT\n\n" + "\n".join(
        f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
        for s in t.segments)


def to_verbose_json(t: Transcript, params: TranscriptionParams) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "transcribe", "language": t.language,
                            "duration": t.duration, "text": t.text}
    if params.segments:
        body["segments"] = t.segments
    if params.words:
        body["words"] = t.words
    body["usage"] = t.usage()
    return body
