"""Mixed load through the router, then a check that the usage ledger counted it exactly.

K concurrent clients, all on ONE API key, loop for T seconds over a weighted mix of request
kinds: `chat` (non-streamed), `chat_stream` (streamed, with `stream_options.include_usage`),
`chat_drop` (streamed; the client hangs up after a few events), `image` and `transcription`
(a short WAV, as multipart, `verbose_json`). Each kind's requests, errors by status (429s are
intended rejections, counted apart), latency p50/p95, throughput and the usage its responses
reported are printed. Then `GET /v1/usage?since=<start>&by=key,endpoint,status` is read with
the admin key and compared, row by row, with what the clients saw: nothing lost, nothing
counted twice. Exits 1 on any ledger mismatch or unexpected error (5xx, non-429 4xx, a
transport error, a stream that ended early).

    python scripts/load.py                             # starts its own stack (configs/cpu.yaml)
    python scripts/load.py --short                     # CI: 4 clients for ~10 s
    python scripts/load.py --clients 8 --seconds 120 --mix chat=4,chat_stream=4,chat_drop=1
    python scripts/load.py --base-url http://127.0.0.1:8000 --key sk-... --admin-key sk-... \\
        --key-name alice                               # a running stack; `alice` is the key's name
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import random
import sys
import tempfile
import time
import wave
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_chat import PROMPTS  # scripts/ is on the path when a script runs

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("chat", "chat_stream", "chat_drop", "image", "transcription")
CHAT_PATH = "/v1/chat/completions"
IMAGE_PATH = "/v1/images/generations"
STT_PATH = "/v1/audio/transcriptions"
ENDPOINT = {"chat": CHAT_PATH, "chat_stream": CHAT_PATH, "chat_drop": CHAT_PATH,
            "image": IMAGE_PATH, "transcription": STT_PATH}
DEFAULT_MIX = "chat=4,chat_stream=4,chat_drop=1,image=1,transcription=1"
CLIENT_CLOSED = 499

# Dropped streams must still be generating when the client leaves, or the router rightly
# meters them as complete (200): with the end-of-sequence tokens banned they run to
# max_tokens. Token ids per chat model (SmolLM2: 0 <|endoftext|>, 2 <|im_end|>).
NO_EOS = {"smollm2-135m-instruct": {"0": -100, "2": -100}}


# --- what the clients saw -------------------------------------------------------------------

@dataclass
class KindStats:
    kind: str
    requests: int = 0  # sent (every outcome below, together)
    ok: int = 0  # 200 and complete (chat_drop: completed + dropped)
    rejected: int = 0  # 429: intended rejections
    statuses: Counter = field(default_factory=Counter)  # every HTTP status received
    transport_errors: int = 0
    broken_streams: int = 0  # 200 whose stream ended without [DONE] or usage
    latencies: list[float] = field(default_factory=list)  # of `ok` requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    # chat_drop only
    dropped: int = 0  # the client left while the answer was still being generated
    completed: int = 0  # the stream ended before the client left ([DONE] seen)
    # The client left after the last token (finish_reason seen) but before [DONE]: the router
    # may have sent the rest already (a 200) or not (a 499). Avoided by design (see NO_EOS).
    ambiguous: int = 0
    usage_unseen: int = 0  # completed streams whose usage event the client did not get
    drop_chunks: int = 0  # content chunks the client got from the streams it dropped
    dropped_prompts: list[int] = field(default_factory=list)  # PROMPTS indexes
    errors: list[str] = field(default_factory=list)  # a few samples

    @property
    def unexpected(self) -> int:
        bad = sum(n for s, n in self.statuses.items() if s != 200 and s != 429)
        return bad + self.transport_errors + self.broken_streams

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:300])


@dataclass
class Settings:
    model: str
    image_model: str
    stt_model: str
    max_tokens: int
    drop_max_tokens: int
    drop_after: int
    image_size: str
    wav: bytes


class Load:
    def __init__(self, clients: list[httpx.AsyncClient], s: Settings):
        self._clients = itertools.cycle(clients)
        self.s = s
        self.stats = {k: KindStats(k) for k in KINDS}
        self.prompt_tokens: dict[int, int] = {}  # PROMPTS index -> prompt tokens, as seen

    @property
    def client(self) -> httpx.AsyncClient:
        """The next router's client: requests take turns over every `--base-url`."""
        return next(self._clients)

    # Each request function returns the seconds to wait before the next (a 429's Retry-After).

    async def chat(self, i: int) -> float:
        st = self.stats["chat"]
        start = time.perf_counter()
        r = await self.client.post(CHAT_PATH, json=self._chat_body(i, self.s.max_tokens))
        if r.status_code != 200:
            return self._failed(st, r)
        usage = r.json().get("usage")
        if not usage:
            st.broken_streams += 1
            st.error("200 without usage")
            return 0
        st.latencies.append(time.perf_counter() - start)
        st.ok += 1
        self._add_usage(st, i, usage)
        return 0

    async def chat_stream(self, i: int) -> float:
        st = self.stats["chat_stream"]
        start = time.perf_counter()
        body = self._chat_body(i, self.s.max_tokens, stream=True)
        async with self.client.stream("POST", CHAT_PATH, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self._failed(st, r)
            usage, done, err = None, False, None
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    err = chunk.get("error") or err
        if not done or usage is None or err:
            st.broken_streams += 1
            st.error(f"stream ended early: done={done} usage={usage is not None} error={err}")
            return 0
        st.latencies.append(time.perf_counter() - start)
        st.ok += 1
        self._add_usage(st, i, usage)
        return 0

    async def chat_drop(self, i: int) -> float:
        st = self.stats["chat_drop"]
        start = time.perf_counter()
        body = self._chat_body(i, self.s.drop_max_tokens, stream=True)
        if bias := NO_EOS.get(self.s.model):
            body["logit_bias"] = bias
        events = chunks = 0
        usage, done, finished, err = None, False, False, None
        async with self.client.stream("POST", CHAT_PATH, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self._failed(st, r)
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                    break
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                err = chunk.get("error") or err
                choices = chunk.get("choices") or []
                if any((c.get("delta") or {}).get("content") for c in choices):
                    chunks += 1
                finished = finished or any(c.get("finish_reason") for c in choices)
                events += 1
                if events >= self.s.drop_after:
                    break
            # Leaving the block unread closes the connection: the router sees the client go.
        if err:
            st.broken_streams += 1
            st.error(f"error event in stream: {err}")
            return 0
        st.latencies.append(time.perf_counter() - start)
        st.ok += 1
        if done:  # it finished before the client left: a complete request
            st.completed += 1
            if usage is None:
                st.usage_unseen += 1
            else:
                self._add_usage(st, i, usage)
        elif finished:
            st.ambiguous += 1
        else:
            st.dropped += 1
            st.drop_chunks += chunks
            st.dropped_prompts.append(i)
        return 0

    async def image(self, i: int) -> float:
        st = self.stats["image"]
        start = time.perf_counter()
        r = await self.client.post(IMAGE_PATH, json={
            "model": self.s.image_model, "prompt": PROMPTS[i], "n": 1,
            "size": self.s.image_size})
        if r.status_code != 200:
            return self._failed(st, r)
        data = r.json()
        st.latencies.append(time.perf_counter() - start)
        st.ok += 1
        st.images += len(data.get("data") or ())
        usage = data.get("usage") or {}
        st.prompt_tokens += int(usage.get("input_tokens") or 0)
        st.completion_tokens += int(usage.get("output_tokens") or 0)
        return 0

    async def transcription(self, i: int) -> float:
        st = self.stats["transcription"]
        start = time.perf_counter()
        r = await self.client.post(STT_PATH, files={"file": ("load.wav", self.s.wav)},
                                   data={"model": self.s.stt_model,
                                         "response_format": "verbose_json"})
        if r.status_code != 200:
            return self._failed(st, r)
        st.latencies.append(time.perf_counter() - start)
        st.ok += 1
        st.audio_seconds += float(r.json()["duration"])
        return 0

    # --- helpers ---

    def _chat_body(self, i: int, max_tokens: int, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.s.model, "max_tokens": max_tokens,
                                "temperature": 1.0,
                                "messages": [{"role": "user", "content": PROMPTS[i]}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _add_usage(self, st: KindStats, i: int, usage: dict[str, Any]) -> None:
        st.prompt_tokens += usage["prompt_tokens"]
        st.completion_tokens += usage["completion_tokens"]
        st.cache_read_tokens += int(usage.get("cache_read_input_tokens") or 0)
        st.cache_creation_tokens += int(usage.get("cache_creation_input_tokens") or 0)
        self.prompt_tokens[i] = usage["prompt_tokens"]

    def _failed(self, st: KindStats, r: httpx.Response) -> float:
        st.statuses[r.status_code] += 1
        if r.status_code == 429:
            st.rejected += 1
            try:
                return min(float(r.headers.get("retry-after", "1")), 5.0)
            except ValueError:
                return 1.0
        st.error(f"{r.status_code}: {r.text}")
        return 0.2  # not a tight loop against a failing endpoint

    async def one(self, kind: str, i: int) -> float:
        st = self.stats[kind]
        st.requests += 1
        try:
            wait = await getattr(self, kind)(i)
        except httpx.TransportError as e:
            st.transport_errors += 1
            st.error(f"{type(e).__name__}: {e}")
            return 0.5
        return wait

    async def run(self, clients: int, seconds: float, mix: dict[str, float],
                  seed: int) -> float:
        kinds = [k for k in KINDS if mix.get(k, 0) > 0]
        weights = [mix[k] for k in kinds]
        firsts = list(kinds)  # every kind in the mix runs at least once, even in a short run
        deadline = time.perf_counter() + seconds

        async def user(c: int) -> None:
            rng = random.Random(seed * 1000 + c)
            n = c
            while time.perf_counter() < deadline:
                kind = firsts.pop(0) if firsts else rng.choices(kinds, weights)[0]
                wait = await self.one(kind, n % len(PROMPTS))
                n += clients
                if wait:
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))

        start = time.perf_counter()
        await asyncio.gather(*(user(c) for c in range(clients)))
        for st in self.stats.values():  # a stream's status arrives with its first bytes
            st.statuses[200] += st.ok + st.broken_streams
        return time.perf_counter() - start


# --- the ledger check -----------------------------------------------------------------------

@dataclass
class Check:
    name: str
    expected: str
    ledger: str
    result: str  # OK, MISMATCH or INFO (not checkable exactly; reported)


def read_ledger(base_url: str, admin_key: str, since: float, key_name: str
                ) -> dict[tuple[str, int], dict[str, Any]]:
    r = httpx.get(f"{base_url}/v1/usage", params={"since": repr(since),
                                                 "by": "key,endpoint,status"},
                  headers={"Authorization": f"Bearer {admin_key}"}, timeout=120)
    r.raise_for_status()
    return {(row["endpoint"], int(row["status"])): row for row in r.json()["data"]
            if row["key"] == key_name}


def settle_ledger(base_url: str, admin_key: str, since: float, key_name: str, expected: int,
                  timeout_s: float = 30) -> dict[tuple[str, int], dict[str, Any]]:
    """The ledger once it holds `expected` requests (a dropped stream is written when the
    router notices the client left), or as it is after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_ledger(base_url, admin_key, since, key_name)
        if sum(row["requests"] for row in rows.values()) >= expected or \
                time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def ledger_checks(stats: dict[str, KindStats], rows: dict[tuple[str, int], dict[str, Any]],
                  prompt_tokens: dict[int, int], drop_max_tokens: int) -> list[Check]:
    checks: list[Check] = []
    empty = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_read_tokens": 0,
             "cache_creation_tokens": 0, "images": 0, "audio_seconds": 0.0}

    def row(endpoint: str, status: int) -> dict[str, Any]:
        return rows.get((endpoint, status), empty)

    def equal(name: str, expected: float, got: float, tolerance: float = 0) -> None:
        ok = abs(expected - got) <= tolerance
        fmt = (lambda v: f"{v:.3f}") if tolerance else (lambda v: str(int(v)))
        checks.append(Check(name, fmt(expected), fmt(got), "OK" if ok else "MISMATCH"))

    def between(name: str, low: int, high: int, got: int) -> None:
        checks.append(Check(name, f"{low}..{high}", str(got),
                            "OK" if low <= got <= high else "MISMATCH"))

    chat, stream, drop = stats["chat"], stats["chat_stream"], stats["chat_drop"]
    image, stt = stats["image"], stats["transcription"]

    # Chat: complete answers are 200s with the usage the clients were shown; dropped streams
    # are 499s. A drop that raced the end of its answer (`ambiguous`) may be either.
    done, gone = row(CHAT_PATH, 200), row(CHAT_PATH, CLIENT_CLOSED)
    complete, amb = chat.ok + stream.ok + drop.completed, drop.ambiguous
    if chat.requests + stream.requests + drop.requests or done["requests"] or gone["requests"]:
        if amb:
            between("chat 200 requests", complete, complete + amb, done["requests"])
            between("chat 499 requests (dropped streams)", drop.dropped, drop.dropped + amb,
                    gone["requests"])
            equal("chat 200 + 499 requests", complete + drop.dropped + amb,
                  done["requests"] + gone["requests"])
        else:
            equal("chat 200 requests", complete, done["requests"])
            equal("chat 499 requests (dropped streams)", drop.dropped, gone["requests"])
        for f in ("prompt_tokens", "completion_tokens", "cache_read_tokens",
                  "cache_creation_tokens"):
            expected = getattr(chat, f) + getattr(stream, f) + getattr(drop, f)
            if drop.usage_unseen or amb:  # some answers' usage never reached the client
                checks.append(Check(f"chat 200 {f}", f">={expected}", str(done[f]), "INFO"))
            else:
                equal(f"chat 200 {f}", expected, done[f])
        # Dropped streams: the prompt and the tokens generated before the client left.
        if drop.dropped and not amb:
            known = [prompt_tokens.get(i) for i in drop.dropped_prompts]
            if None in known:
                checks.append(Check("chat 499 prompt_tokens", "?", str(gone["prompt_tokens"]),
                                    "INFO"))
            else:
                equal("chat 499 prompt_tokens", sum(known), gone["prompt_tokens"])
            # Each content chunk is at least one token; none can run past max_tokens.
            between("chat 499 completion_tokens (in range)", drop.drop_chunks,
                    drop.dropped * drop_max_tokens, gone["completion_tokens"])

    done = row(IMAGE_PATH, 200)
    if image.requests or done["requests"]:
        equal("image 200 requests", image.ok, done["requests"])
        equal("image 200 images", image.images, done["images"])
        equal("image 200 prompt_tokens", image.prompt_tokens, done["prompt_tokens"])

    done = row(STT_PATH, 200)
    if stt.requests or done["requests"]:
        equal("transcription 200 requests", stt.ok, done["requests"])
        # The response's `duration` and the worker's metered seconds are each the decoded
        # length, one rounded to the millisecond.
        equal("transcription 200 audio_seconds", stt.audio_seconds, done["audio_seconds"],
              tolerance=0.01 * max(1, stt.ok))

    # Every other status, per endpoint: each answer the clients got is one ledger row, and the
    # ledger holds nothing they did not get.
    seen: Counter = Counter()
    for st in stats.values():
        for status, n in st.statuses.items():
            if status != 200:
                seen[(ENDPOINT[st.kind], status)] += n
    others = set(seen) | {k for k in rows if k[1] not in (200, CLIENT_CLOSED)}
    for endpoint, status in sorted(others):
        equal(f"{endpoint} {status} requests", seen[(endpoint, status)],
              row(endpoint, status)["requests"])
    strays = {k for k in rows if k[0] not in ENDPOINT.values()}
    for endpoint, status in sorted(strays):
        equal(f"{endpoint} {status} requests", 0, rows[(endpoint, status)]["requests"])

    sent = sum(st.requests - st.transport_errors for st in stats.values())
    equal("all requests", sent, sum(r["requests"] for r in rows.values()))
    return checks


# --- output ---------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1)]


def usage_text(st: KindStats) -> str:
    if st.kind == "image":
        return f"{st.images} images, {st.prompt_tokens} prompt tok"
    if st.kind == "transcription":
        return f"{st.audio_seconds:.2f} s audio"
    text = f"{st.prompt_tokens} prompt + {st.completion_tokens} completion tok"
    if st.kind == "chat_drop":
        text = (f"{st.dropped} dropped ({st.drop_chunks} chunks seen), "
                + (f"{st.ambiguous} left at the end, " if st.ambiguous else "")
                + f"{st.completed} completed" + (f": {text}" if st.completed else ""))
    return text


def kind_table(stats: dict[str, KindStats], elapsed: float) -> str:
    head = (f"{'kind':<14}{'reqs':>6}{'ok':>6}{'429':>5}{'errors':>7}{'p50':>9}{'p95':>9}"
            f"{'req/s':>8}{'tok/s':>8}  usage from responses")
    lines = [head, "-" * len(head)]
    for st in stats.values():
        if not st.requests:
            continue
        # Output tokens/s of the answers read whole (a dropped stream's count is not seen).
        tps = f"{st.completion_tokens / elapsed:.1f}" if st.kind in ("chat", "chat_stream") \
            else "-"
        lines.append(
            f"{st.kind:<14}{st.requests:>6}{st.ok:>6}{st.rejected:>5}{st.unexpected:>7}"
            f"{pct(st.latencies, 50):>8.2f}s{pct(st.latencies, 95):>8.2f}s"
            f"{st.ok / elapsed:>8.2f}{tps:>8}  {usage_text(st)}")
    total_ok = sum(st.ok for st in stats.values())
    lines.append(f"{'all':<14}{sum(st.requests for st in stats.values()):>6}{total_ok:>6}"
                 f"{sum(st.rejected for st in stats.values()):>5}"
                 f"{sum(st.unexpected for st in stats.values()):>7}{'':>18}"
                 f"{total_ok / elapsed:>8.2f}")
    return "\n".join(lines)


def error_lines(stats: dict[str, KindStats]) -> list[str]:
    lines = []
    for st in stats.values():
        codes = {s: n for s, n in sorted(st.statuses.items()) if s != 200}
        if codes or st.transport_errors or st.broken_streams:
            lines.append(f"{st.kind}: statuses {codes or '{}'}, transport errors "
                         f"{st.transport_errors}, broken streams {st.broken_streams}")
            lines += [f"    {e}" for e in st.errors]
    return lines


def check_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) + 2
    head = f"{'ledger check':<{width}}{'expected':>14}{'ledger':>14}  result"
    lines = [head, "-" * len(head)]
    lines += [f"{c.name:<{width}}{c.expected:>14}{c.ledger:>14}  {c.result}" for c in checks]
    return "\n".join(lines)


# --- setup ----------------------------------------------------------------------------------

def make_wav(seconds: float, rate: int = 16000) -> bytes:
    """A few seconds of voice-like tones (a pitch sweep in syllable-sized bursts), 16-bit mono:
    what the transcription worker decodes is exactly `seconds` long."""
    n = round(seconds * rate)
    frames = bytearray()
    for t in range(n):
        s = t / rate
        envelope = max(0.0, math.sin(math.pi * s * 4)) ** 2
        pitch = 140 + 40 * math.sin(2 * math.pi * 0.7 * s)
        v = envelope * (0.5 * math.sin(2 * math.pi * pitch * s)
                        + 0.3 * math.sin(2 * math.pi * 2.5 * pitch * s)
                        + 0.2 * math.sin(2 * math.pi * 4 * pitch * s))
        frames += int(max(-1.0, min(1.0, v)) * 20000).to_bytes(2, "little", signed=True)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; use {', '.join(KINDS)}")
        try:
            mix[kind] = float(weight or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from None
    if not any(w > 0 for w in mix.values()):
        raise argparse.ArgumentTypeError("the mix has no kind with a weight above 0")
    return mix


def start_stack(configs: list[Path], disable: set[str], rpm: int | None):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
    from serving.config import load_config
    from tests.support.harness import start_background_stack

    workers = load_config(configs).workers
    workdir = Path(tempfile.mkdtemp(prefix="load-"))
    overlay: dict[str, Any] = {"workers": {
        n: {"enabled": False} for n, w in workers.items()
        if w.enabled and w.entry is not None and w.entry.modality.value in disable}}
    if rpm:
        overlay["router"] = {"default_limits": {"requests_per_minute": rpm}}
    (workdir / "overlay.yaml").write_text(json.dumps(overlay))
    print(f"starting stack ({workdir / 'stack.log'})...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    stack = start_background_stack([*configs, workdir / "overlay.yaml"], workdir)
    print(f"stack up in {time.perf_counter() - started:.0f} s at {stack.base_url}",
          file=sys.stderr, flush=True)
    return stack


async def warm_up(load: Load, kinds: list[str]) -> int:
    """One request of each kind before the measured run, so no model's first request (a
    compile, a lazy load) lands in the latencies. Not in the ledger window. Returns how many
    requests it sent."""
    sent = 0
    for kind in kinds:
        if kind != "chat_drop":
            await load.one(kind, 0)
            sent += 1
    if "chat_drop" in kinds:  # each prompt's token count, to check the dropped streams' rows
        for i in range(len(PROMPTS)):
            r = await load.client.post(CHAT_PATH, json=load._chat_body(i, 1))
            sent += 1
            if r.status_code == 200:
                load.prompt_tokens[i] = r.json()["usage"]["prompt_tokens"]
    return sent


async def run_load(args: argparse.Namespace, base_urls: list[str], key: str,
                   settings: Settings) -> tuple[Load, float, float]:
    limits = httpx.Limits(max_connections=args.clients + 4,
                          max_keepalive_connections=args.clients + 4)
    base_url = base_urls[0]  # routers share one ledger: any of them reads it
    async with contextlib.AsyncExitStack() as clients:
        load = Load([await clients.enter_async_context(httpx.AsyncClient(
            base_url=url, limits=limits, timeout=args.timeout,
            headers={"Authorization": f"Bearer {key}"})) for url in base_urls], settings)
        if args.warmup:
            print("warming up...", file=sys.stderr, flush=True)
            warm_start = time.time()
            sent = await warm_up(load, [k for k in KINDS if args.mix.get(k, 0) > 0])
            # The router writes a request's record just after its last byte: wait until the
            # warm-up's are all in, so none can fall inside the window that starts next.
            await asyncio.to_thread(settle_ledger, base_url, args.admin_key, warm_start,
                                    args.key_name, sent)
            warm = [e for st in load.stats.values() for e in st.errors]
            load.stats = {k: KindStats(k) for k in KINDS}
            if warm:
                print("warm-up errors:\n  " + "\n  ".join(warm), file=sys.stderr)
        since = time.time()
        print(f"load: {args.clients} clients for {args.seconds:g} s, mix "
              f"{','.join(f'{k}={w:g}' for k, w in args.mix.items())}", file=sys.stderr,
              flush=True)
        elapsed = await load.run(args.clients, args.seconds, args.mix, args.seed)
    return load, since, elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path,
                   help="config files for the stack this starts (default configs/cpu.yaml)")
    p.add_argument("--disable", default="video,speech",
                   help="modalities whose workers the started stack leaves off "
                        "(default video,speech; '' for none)")
    p.add_argument("--requests-per-minute", type=int,
                   help="the started stack's default per-key limit, to exercise 429s")
    p.add_argument("--base-url", help="a running stack's router, e.g. http://127.0.0.1:8000; "
                   "several, comma-separated, take turns (router replicas sharing one ledger)")
    p.add_argument("--key", help="its API key for the load (only this load should use it)")
    p.add_argument("--admin-key", help="its admin key, to read /v1/usage")
    p.add_argument("--key-name", default="env-1",
                   help="the load key's name in the ledger (a started stack's is env-1)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--short", action="store_true", help="CI: 4 clients for 10 s")
    p.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX),
                   help=f"weights per kind (default {DEFAULT_MIX})")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--image-model", default="flux-tiny")
    p.add_argument("--stt-model", default="whisper-tiny.en")
    p.add_argument("--image-size", default="128x128")
    p.add_argument("--max-tokens", type=int, default=32, help="for chat and chat_stream")
    p.add_argument("--drop-max-tokens", type=int, default=256,
                   help="chat_drop's max_tokens: long enough to still be generating")
    p.add_argument("--drop-after", type=int, default=3,
                   help="chat_drop leaves after this many events")
    p.add_argument("--audio-seconds", type=float, default=3.0, help="the transcribed clip")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.short:
        args.clients, args.seconds = 4, 10.0
    external = args.base_url is not None
    if external and not (args.key and args.admin_key):
        p.error("--base-url needs --key and --admin-key")
    if not external and (args.key or args.admin_key):
        p.error("--key/--admin-key go with --base-url")

    settings = Settings(args.model, args.image_model, args.stt_model, args.max_tokens,
                        args.drop_max_tokens, args.drop_after, args.image_size,
                        make_wav(args.audio_seconds))
    stack = None
    if not external:
        configs = args.config or [ROOT / "configs" / "cpu.yaml"]
        disable = {m.strip() for m in args.disable.split(",") if m.strip()}
        stack = start_stack(configs, disable, args.requests_per_minute)
        args.base_url, args.key, args.admin_key = stack.base_url, stack.key, stack.admin_key
    try:
        base_urls = [u.strip() for u in args.base_url.split(",") if u.strip()]
        load, since, elapsed = asyncio.run(run_load(args, base_urls, args.key, settings))
        expected = sum(st.requests - st.transport_errors for st in load.stats.values())
        rows = settle_ledger(base_urls[0], args.admin_key, since, args.key_name, expected)
    finally:
        if stack is not None:
            stack.stop()

    stats = load.stats
    checks = ledger_checks(stats, rows, load.prompt_tokens, args.drop_max_tokens)
    print(f"\n{args.clients} clients, {args.seconds:g} s of load ({elapsed:.1f} s until the "
          f"last answer), key {args.key_name}")
    print(kind_table(stats, elapsed))
    if errors := error_lines(stats):
        print("\nanswers other than 200:\n" + "\n".join(errors))
    print()
    print(check_table(checks))
    unexpected = sum(st.unexpected for st in stats.values())
    mismatches = [c for c in checks if c.result == "MISMATCH"]
    print(f"\nledger: {len(checks) - len(mismatches)}/{len(checks)} checks OK"
          f"{', ' + str(len(mismatches)) + ' MISMATCH' if mismatches else ''}; "
          f"unexpected errors: {unexpected}")
    if args.json:
        args.json.write_text(json.dumps({
            "clients": args.clients, "seconds": args.seconds, "elapsed_s": elapsed,
            "mix": args.mix, "since": since, "key_name": args.key_name,
            "kinds": {k: {**{f: v for f, v in asdict(st).items()
                             if f not in ("latencies", "statuses", "dropped_prompts")},
                          "statuses": {str(s): n for s, n in st.statuses.items()},
                          "unexpected": st.unexpected,
                          "latency_p50_s": pct(st.latencies, 50),
                          "latency_p95_s": pct(st.latencies, 95),
                          "req_per_s": st.ok / elapsed}
                      for k, st in stats.items()},
            "ledger_rows": [{"endpoint": e, "status": s, **r} for (e, s), r in rows.items()],
            "checks": [asdict(c) for c in checks],
            "ok": not mismatches and not unexpected,
        }, indent=2, default=str))
    return 1 if mismatches or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
