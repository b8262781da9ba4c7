"""Audio longer than Whisper's 30 s window goes through faster-whisper's batched pipeline when
the worker is configured for it (the GPU configs are), and still transcribes right."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serving.config import load_catalog
from serving.config.engines import WhisperArgs
from serving.media.audio import AudioEncoder
from serving.protocol.audio import TranscriptionParams
from serving.weights.prepare import prepare_model
from serving.workers.speech.engines import load_engine
from serving.workers.transcription.engine import SAMPLE_RATE, Transcriber, decode
from serving.workers.transcription.server import _drain

ROOT = Path(__file__).resolve().parent.parent
FOX = "The quick brown fox jumps over the lazy dog. "


def spoken(text: str) -> np.ndarray:
    """`text` spoken by hibari, as the transcription worker decodes an upload (16 kHz)."""
    engine = load_engine("hibari", None, threads=2)
    encoder = AudioEncoder("wav", engine.sample_rate)
    data = encoder.header() + encoder.encode(engine.synthesize(text, "heart", 1.0))
    return decode(data + encoder.close())


@pytest.mark.parametrize("batch_size", [1, 4])
def test_long_audio_transcribes_batched_or_not(batch_size: int,
                                               caplog: pytest.LogCaptureFixture):
    audio = spoken(FOX * 16)
    assert len(audio) > 30 * SAMPLE_RATE
    entry = load_catalog(ROOT / "models")["whisper-tiny.en"]
    path = prepare_model(entry, ROOT / ".cache" / "test")
    engine = Transcriber(str(path), WhisperArgs(cpu_threads=2, batch_size=batch_size), "cpu")
    params = TranscriptionParams(language="en", prompt=None, temperature=0.0,
                                 response_format="json", words=False, segments=False,
                                 stream=False)
    with caplog.at_level(logging.INFO, logger="serving.workers.transcription"):
        transcript = _drain(engine.transcribe(audio, params))
    assert ("in windows, 4 at a time" in caplog.text) == (batch_size == 4)
    words = transcript.text.lower().replace(",", "").replace(".", "").split()
    assert words.count("fox") >= 12, transcript.text
    assert len(transcript.segments) >= 2
