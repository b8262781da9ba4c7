"""A multi-turn chat workload that rewards prefix caching, and what it measured.

Several long shared system prompts; users who each hold conversations that grow turn by turn
(every turn resends the system prompt, the whole history with the model's own answers, and a
new question); all users at once. A replica that saw a conversation's previous turn holds its
whole prefix in vLLM's prefix cache, one that did not holds at best the system prompt: that is
what a pool router's policy changes.

Talks OpenAI chat, streaming with `stream_options.include_usage`, to any base URL (a pool
router, `serving up`, one vLLM), and reads the cache hits two ways: per request from the
usage (`prompt_tokens_details.cached_tokens`, or the router's `cache_read_input_tokens`), and
per replica from vLLM's own counters (`vllm:prefix_cache_queries_total`/`_hits_total`,
`vllm:request_success_total`), scraped before and after.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_chat import pct  # scripts/ is on the path when a script runs

_VOCABULARY = (
    "account action answer archive balance batch billing budget cache calendar carrier channel "
    "check claim client cluster code comment contract cost credit customer data deadline "
    "delivery deposit design device discount document draft email engine error estimate event "
    "export feature field file filter folder form format forecast guide history holiday "
    "inventory invoice issue item journal key label ledger license limit list login manager "
    "margin meeting memo message method metric model module monitor network note notice number "
    "offer office option order owner package page partner password payment period permission "
    "plan policy portal price priority process product profile project quota quote rate record "
    "refund region release report request resource response review risk role route rule "
    "sample schedule score search season server service session setting shipment signal "
    "source staff status step stock storage supplier support survey system table target task "
    "team template ticket timeline token total tracker transfer trial update upload user "
    "value vendor version volume warehouse warranty window workflow")
WORDS = _VOCABULARY.split()
TOKENS_A_WORD = 1.1  # measured: SmolLM2's tokenizer on text(), 1154 words gave 1275 tokens


def text(rng: random.Random, words: int) -> str:
    """`words` seeded words as sentences of 8-16: distinct text that tokenises predictably
    (TOKENS_A_WORD with SmolLM2's tokenizer)."""
    out, left = [], words
    while left > 0:
        n = min(left, rng.randint(8, 16))
        sentence = " ".join(rng.choice(WORDS) for _ in range(n))
        out.append(sentence[0].upper() + sentence[1:] + ".")
        left -= n
    return " ".join(out)


@dataclass
class Workload:
    """Who says what. `nonce` opens every system prompt, so a run never reads the cache an
    earlier run on the same replicas left behind."""

    prompts: list[str]
    # users[u] = that user's conversations, each (system prompt index, its questions)
    users: list[list[tuple[int, list[str]]]]
    max_tokens: int

    @property
    def requests(self) -> int:
        return sum(len(q) for convs in self.users for _, q in convs)


@dataclass(frozen=True)
class Shape:
    """A named workload of docs/benchmarks.md: what it sends, and at what concurrency."""

    prompts: int
    prompt_tokens: int
    users: int
    conversations: int
    turns: int
    concurrency: int | None = None  # None: every user at once
    note: str = ""


SHAPES = {
    "A": Shape(4, 1500, 8, 2, 6, note="the shape a pool is for: shared system prompts, "
               "8 users at once"),
    "C": Shape(8, 2000, 8, 2, 4, note="a working set past one replica's cache (run the "
               "replicas with kv_cache_memory_bytes: 256M)"),
    "D": Shape(4, 4000, 8, 1, 3, concurrency=1,
               note="one request at a time, 8 users x 3 turns, a working set of ~1.4x one "
               "replica's cache (run the replicas with kv_cache_memory_bytes: 256M, "
               "~11.6k tokens)"),
}


def build_workload(*, prompts: int, prompt_tokens: int, users: int, conversations: int,
                   turns: int, max_tokens: int, nonce: str, seed: int = 0) -> Workload:
    """Conversations spread evenly over the system prompts (each prompt as often as any
    other), in a seeded order; the same seed gives every variant the same words."""
    rng = random.Random(seed)
    system = [f"[{nonce}] You are assistant {i} of the operations desk. Follow these rules. "
              + text(rng, round(prompt_tokens / TOKENS_A_WORD)) for i in range(prompts)]
    slots = [i % prompts for i in range(users * conversations)]
    rng.shuffle(slots)
    plan = [[(slots[u * conversations + c],
              [f"Question {t + 1}: " + text(rng, rng.randint(12, 24)) + "?"
               for t in range(turns)])
             for c in range(conversations)] for u in range(users)]
    return Workload(system, plan, max_tokens)


@dataclass
class Turn:
    """One request: when it started and ended (monotonic seconds) and what came back."""

    user: int
    start: float
    end: float = 0.0
    ttft: float | None = None
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


def cached_tokens(usage: dict) -> int:
    """Prompt tokens read from the cache: vLLM's and OpenAI's field, or this project's."""
    if "cache_read_input_tokens" in usage:
        return usage["cache_read_input_tokens"] or 0
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


async def one_turn(client: httpx.AsyncClient, model: str, messages: list[dict],
                   max_tokens: int, turn: Turn) -> str | None:
    """Streams one answer into `turn`; returns its text, or None when the request failed."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    answer: list[str] = []
    usage = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                turn.error = f"{r.status_code} {(await r.aread())[:120]!r}"
                return None
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if content := (choice.get("delta") or {}).get("content"):
                        if turn.ttft is None:
                            turn.ttft = time.monotonic() - turn.start
                        answer.append(content)
    except httpx.HTTPError as e:
        turn.error = f"{type(e).__name__}: {e}"[:160]
        return None
    finally:
        turn.end = time.monotonic()
    if usage is None:
        turn.error = "stream ended without usage"
        return None
    turn.ok = True
    turn.prompt_tokens = usage["prompt_tokens"]
    turn.cached_tokens = cached_tokens(usage)
    turn.output_tokens = usage["completion_tokens"]
    return "".join(answer)


class Turnstile:
    """At most `slots` requests in flight; a freed slot goes to one of the users waiting,
    drawn at random (seeded), as independent users' requests arrive. In a fixed rotation
    an even number of users would each land on the same replica under round robin too."""

    def __init__(self, slots: int, seed: int = 0) -> None:
        self.free = slots
        self.waiting: list[asyncio.Future[None]] = []
        self.rng = random.Random(seed)

    async def __aenter__(self) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        ticket = asyncio.get_running_loop().create_future()
        self.waiting.append(ticket)
        await ticket

    async def __aexit__(self, *exc: object) -> None:
        if self.waiting:
            self.waiting.pop(self.rng.randrange(len(self.waiting))).set_result(None)
        else:
            self.free += 1


async def run_workload(url: str, model: str, workload: Workload, key: str = "",
                       timeout_s: float = 120, concurrency: int | None = None) -> list[Turn]:
    """Every user at once, each through their conversations in order; with `concurrency`,
    at most that many requests in flight, each freed slot going to a waiting user drawn at
    random (at 1: light traffic, where nothing but the router's placement spreads the
    load). A failed turn leaves its question out of the history (no answer to append) and
    the conversation goes on."""
    turns: list[Turn] = []
    gate = Turnstile(concurrency or len(workload.users))
    limits = httpx.Limits(max_connections=len(workload.users),
                          max_keepalive_connections=len(workload.users))
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits,
                                 headers=headers) as client:

        async def user(u: int) -> None:
            for prompt, questions in workload.users[u]:
                messages = [{"role": "system", "content": workload.prompts[prompt]}]
                for question in questions:
                    asked = [*messages, {"role": "user", "content": question}]
                    async with gate:
                        turn = Turn(u, time.monotonic())
                        turns.append(turn)
                        answer = await one_turn(client, model, asked, workload.max_tokens,
                                                turn)
                    if answer is not None:
                        messages = [*asked, {"role": "assistant", "content": answer}]

        await asyncio.gather(*(user(u) for u in range(len(workload.users))))
    return turns


# --- vLLM's counters, per replica --------------------------------------------------------

COUNTERS = {"queries": "vllm:prefix_cache_queries_total", "hits": "vllm:prefix_cache_hits_total",
            "requests": "vllm:request_success_total"}
_SAMPLE = re.compile(r"^([a-z_:]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(urls: list[str]) -> dict[str, dict[str, float] | None]:
    """Each replica's counters (summed over labels), or None for one that does not answer."""
    out: dict[str, dict[str, float] | None] = {}
    for url in urls:
        try:
            body = httpx.get(url + "/metrics", timeout=5).text
        except httpx.HTTPError:
            out[url] = None
            continue
        totals = dict.fromkeys(COUNTERS, 0.0)
        names = {v: k for k, v in COUNTERS.items()}
        for line in body.splitlines():
            if (m := _SAMPLE.match(line)) and m.group(1) in names:
                totals[names[m.group(1)]] += float(m.group(2))
        out[url] = totals
    return out


def delta(before: dict, after: dict) -> dict[str, dict[str, float] | None]:
    return {url: None if before[url] is None or after.get(url) is None
            else {k: after[url][k] - before[url][k] for k in COUNTERS} for url in before}


# --- what a run measured ------------------------------------------------------------------

@dataclass
class Summary:
    """One run of the workload (or several merged: rounds of one variant)."""

    label: str
    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0
    replicas: list[dict[str, float] | None] = field(default_factory=list)  # counter deltas

    def merge(self, other: Summary) -> None:
        self.turns += other.turns
        self.seconds += other.seconds
        if not self.replicas:
            self.replicas = [None if r is None else dict(r) for r in other.replicas]
            return
        for mine, theirs in zip(self.replicas, other.replicas, strict=True):
            if mine is not None and theirs is not None:
                for k in COUNTERS:
                    mine[k] += theirs[k]

    @property
    def ok(self) -> list[Turn]:
        return [t for t in self.turns if t.ok]

    @property
    def failed(self) -> int:
        return len(self.turns) - len(self.ok)

    @property
    def usage_hit_rate(self) -> float:
        prompt = sum(t.prompt_tokens for t in self.ok)
        return sum(t.cached_tokens for t in self.ok) / prompt if prompt else float("nan")

    @property
    def vllm_hit_rate(self) -> float:
        live = [r for r in self.replicas if r is not None]
        queries = sum(r["queries"] for r in live)
        return sum(r["hits"] for r in live) / queries if queries else float("nan")

    @property
    def per_replica(self) -> list[int | None]:
        return [None if r is None else round(r["requests"]) for r in self.replicas]

    @property
    def imbalance(self) -> float:
        """Busiest replica's requests over the idlest's (1.0: even)."""
        counts = [c for c in self.per_replica if c is not None]
        return max(counts) / min(counts) if counts and min(counts) else float("inf")

    @property
    def tps(self) -> float:
        return sum(t.output_tokens for t in self.ok) / self.seconds if self.seconds else 0.0

    def ttft(self, q: float) -> float:
        return pct([t.ttft for t in self.ok if t.ttft is not None], q)


def table(rows: list[Summary]) -> str:
    head = (f"{'variant':<26}{'reqs':>6}{'fail':>5}{'hit vLLM':>10}{'hit usage':>10}"
            f"{'TTFT p50':>10}{'TTFT p99':>10}{'out tok/s':>10}  per replica")
    lines = [head, "-" * (len(head) + 10)]
    for s in rows:
        share = "/".join("-" if c is None else str(c) for c in s.per_replica)
        lines.append(f"{s.label:<26}{len(s.turns):>6}{s.failed:>5}{s.vllm_hit_rate:>10.3f}"
                     f"{s.usage_hit_rate:>10.3f}{s.ttft(50) * 1e3:>8.0f}ms"
                     f"{s.ttft(99) * 1e3:>8.0f}ms{s.tps:>10.1f}  {share}")
    return "\n".join(lines)


def plot_png(rows: list[Summary], path: Path, title: str) -> None:
    """Hit rate, TTFT p50 and requests per replica of each variant, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.label for s in rows]
    fig, (hit, ttft, split) = plt.subplots(1, 3, figsize=(13, 3.6))
    hit.barh(labels, [s.vllm_hit_rate for s in rows])
    hit.set_xlim(0, 1)
    hit.set_title("prefix-cache hit rate (vLLM)")
    ttft.barh(labels, [s.ttft(50) * 1e3 for s in rows])
    ttft.set_title("TTFT p50 (ms)")
    ttft.set_yticks([])
    left = [0.0] * len(rows)
    for r in range(max((len(s.per_replica) for s in rows), default=0)):
        counts = [float((s.per_replica[r:r + 1] or [0])[0] or 0) for s in rows]
        split.barh(labels, counts, left=left, label=f"replica {r}")
        left = [a + b for a, b in zip(left, counts, strict=True)]
    split.set_title("requests per replica")
    split.set_yticks([])
    split.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
