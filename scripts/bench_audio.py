"""Audio throughput: transcription through the router vs a direct faster-whisper call, and TTS.

Transcription: the real-time factor (processing time / audio duration) and requests/s at each
concurrency, for the same clip sent through the router and given straight to faster-whisper's
WhisperModel in this process, in one run. Speech: the real-time factor and time to the first
audio byte through the router, for a short and a long input.

    python scripts/bench_audio.py -c configs/cpu.yaml --concurrency 1,4 --requests 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support.harness import start_background_stack

SHORT = "The quick brown fox jumps over the lazy dog."
LONG = " ".join([
    "Streaming speech matters most for long answers.",
    "A listener should hear the first sentence while the rest is still being made.",
    "This paragraph is long enough to be split into several chunks.",
    "Each chunk is synthesised, encoded and sent before the next one starts.",
] * 4)


def duration(audio: bytes) -> float:
    with av.open(io.BytesIO(audio)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        return samples / container.streams.audio[0].rate


async def post_many(url: str, key: str, make, concurrency: int, total: int) -> float:
    """Wall time for `total` requests, `concurrency` at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                r = await make(client)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


async def first_byte(url: str, key: str, body: dict) -> tuple[float, float, bytes]:
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        start = time.perf_counter()
        ttfb, chunks = None, []
        async with client.stream("POST", "/v1/audio/speech", json=body) as r:
            async for chunk in r.aiter_raw():
                if ttfb is None and chunk:
                    ttfb = time.perf_counter() - start
                chunks.append(chunk)
        return ttfb or 0.0, time.perf_counter() - start, b"".join(chunks)


def figure(rows: list[dict], path: Path) -> None:
    """The PNG for `--plot`: transcription requests/s against concurrency, router and direct;
    speech time to first byte and real-time factor per input."""
    from plots import Bars, Lines, save

    transcription = {t: [(r["concurrency"], r["req_per_s"]) for r in rows
                         if r["what"] == "transcription" and r["target"] == t]
                     for t in ("router", "direct")}
    speech = [r for r in rows if r["what"].startswith("speech")]
    save(path, "Audio: transcription and speech", [
        Lines("concurrent requests", "transcriptions/s", transcription,
              title="transcription, router against direct"),
        Bars("ms", {r["what"].removeprefix("speech "): {"first byte": r["ttfb_s"] * 1e3}
                    for r in speech}, title="speech: time to the first audio byte"),
        Bars("processing time / audio length", {r["what"].removeprefix("speech "): {
            "real-time factor": r["rtf"]} for r in speech}, title="speech: real-time factor"),
    ], panel_size=(4.6, 3.6))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path, required=True)
    p.add_argument("--concurrency", default="1,4")
    p.add_argument("--requests", type=int, default=8, help="transcriptions per point")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="also write a PNG of the results here")
    args = p.parse_args()

    from serving.config import load_config
    from serving.weights.prepare import prepare_model

    config = load_config(args.config)
    stt = next(w for w in config.workers.values() if w.entry.modality == "transcription")
    tts = next(w for w in config.workers.values() if w.entry.modality == "speech")
    keep = {n for n, w in config.workers.items() if w is stt or w is tts}
    workdir = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    overlay = {"workers": {n: {"enabled": False} for n in config.workers if n not in keep}}
    (workdir / "overlay.yaml").write_text(json.dumps(overlay))
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict] = []

    print("starting stack...", file=sys.stderr)
    stack = start_background_stack([*args.config, workdir / "overlay.yaml"], workdir)
    try:
        url, key = stack.base_url, stack.key
        # A ~10 s clip of real speech to transcribe, made by the speech worker.
        clip = httpx.post(f"{url}/v1/audio/speech", headers={"Authorization": f"Bearer {key}"},
                          json={"model": tts.entry.id, "input": LONG[:400], "voice": "alloy",
                                "response_format": "wav"}, timeout=120).content
        clip_s = duration(clip)

        def transcription(client: httpx.AsyncClient):
            return client.post("/v1/audio/transcriptions", files={"file": ("clip.wav", clip)},
                               data={"model": stt.entry.id})

        asyncio.run(post_many(url, key, transcription, 1, 1))  # warm-up
        for c in levels:
            wall = asyncio.run(post_many(url, key, transcription, c, args.requests))
            rows.append({"what": "transcription", "target": "router", "concurrency": c,
                         "req_per_s": args.requests / wall,
                         "rtf": wall / (args.requests * clip_s) * c})

        from faster_whisper import WhisperModel, decode_audio

        model_dir = prepare_model(stt.entry, config.cache_dir)
        # The same engine settings as the worker, so the difference is what the router and
        # the worker's HTTP layer cost.
        model = WhisperModel(str(model_dir), device="cpu", compute_type=stt.args.compute_type,
                             cpu_threads=stt.args.cpu_threads,
                             num_workers=stt.args.num_workers)

        def direct(_: int) -> None:
            segments, _info = model.transcribe(decode_audio(io.BytesIO(clip)),
                                               beam_size=stt.args.beam_size)
            list(segments)

        direct(0)  # warm-up
        for c in levels:
            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(direct, range(args.requests)))
            wall = time.perf_counter() - start
            rows.append({"what": "transcription", "target": "direct", "concurrency": c,
                         "req_per_s": args.requests / wall,
                         "rtf": wall / (args.requests * clip_s) * c})

        for name, text in (("short", SHORT), ("long", LONG)):
            body = {"model": tts.entry.id, "input": text, "voice": "alloy",
                    "response_format": "mp3"}
            asyncio.run(first_byte(url, key, body))  # warm-up
            ttfb, total, audio = asyncio.run(first_byte(url, key, body))
            rows.append({"what": f"speech ({name}, {len(text)} chars)", "target": "router",
                         "ttfb_s": ttfb, "rtf": total / duration(audio),
                         "audio_s": duration(audio)})
    finally:
        stack.stop()

    print(f"transcription: {stt.entry.id}, {clip_s:.1f} s clip; speech: {tts.entry.id}")
    print(f"{'what':<28}{'target':<8}{'conc':>5}{'req/s':>8}{'RTF':>8}{'TTFB':>9}")
    for r in rows:
        req = f"{r['req_per_s']:.2f}" if "req_per_s" in r else "-"
        ttfb = f"{r['ttfb_s'] * 1e3:.0f}ms" if "ttfb_s" in r else "-"
        print(f"{r['what']:<28}{r['target']:<8}{r.get('concurrency', '-')!s:>5}{req:>8}"
              f"{r['rtf']:>8.3f}{ttfb:>9}")
    for c in levels:
        router, direct = (next(r for r in rows if r["what"] == "transcription"
                               and r["target"] == t and r["concurrency"] == c)
                          for t in ("router", "direct"))
        print(f"router/direct transcription req/s at {c}: "
              f"{router['req_per_s'] / direct['req_per_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        figure(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
