"""Streaming chat load: N concurrent clients for T seconds against the router or a vLLM worker.

Reports requests/s, output tokens/s, time to first token and inter-token latency (p50/p99).
`--compare` runs the same load against the worker directly and through the router, in
alternating rounds within one invocation, and prints router/direct ratios: the router's cost.
`--variant NAME=overlay.yaml` (repeatable) compares deployments instead: each round starts the
stack once per variant, in alternating order, and runs the same load against it, so a dtype or
a core binding is measured side by side with the others in one run.

    python scripts/bench_chat.py --compare -c configs/cpu.yaml           # starts its own stack
    python scripts/bench_chat.py --target router --url http://127.0.0.1:8000 --key sk-...
    python scripts/bench_chat.py --target direct -c configs/cpu.yaml \
        --variant bf16=bf16.yaml --variant f32=f32.yaml --concurrency 1,16
    python scripts/bench_chat.py -c configs/cpu.yaml --image 256x256   # prompts with a picture

`--image` (a file, or WxH for a seeded random picture of that size) sends the picture as a data
URL with every prompt, for models with the `vision` capability: TTFT then includes decoding it
(router and vLLM) and encoding it into image tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the ocean.",
    "Describe a day in the life of a cat.",
    "What makes a good cup of tea?",
    "Tell me about the history of bread.",
]


def with_image(spec: str) -> list[list[dict]]:
    """PROMPTS as content parts, each followed by the picture `spec`: a file, or WxH for random
    pixels (seeded: every run sends the same bytes)."""
    import base64
    import io
    import random

    from PIL import Image

    if "x" in spec and spec.replace("x", "", 1).isdigit():
        width, height = (int(n) for n in spec.split("x"))
        pixels = random.Random(0).randbytes(width * height * 3)
        out = io.BytesIO()
        Image.frombytes("RGB", (width, height), pixels).save(out, "PNG")
        data = out.getvalue()
    else:
        data = Path(spec).read_bytes()
    mime = Image.MIME[Image.open(io.BytesIO(data)).format]
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return [[{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
            for prompt in PROMPTS]


@dataclass
class Result:
    target: str
    concurrency: int
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    output_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        self.seconds += other.seconds
        self.requests += other.requests
        self.errors += other.errors
        self.output_tokens += other.output_tokens
        self.ttft += other.ttft
        self.itl += other.itl

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def tps(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def one_stream(client: httpx.AsyncClient, model: str, prompt: str | list, max_tokens: int,
                     result: Result) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 1.0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    last = None
    usage = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            result.errors += 1
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            if '"usage":{' in line:
                # The worker puts running usage on every chunk (the router's launch flags;
                # the router cuts it out): a content chunk may carry usage too.
                event = json.loads(line[6:])
                usage = event["usage"]
                if not any((c.get("delta") or {}).get("content")
                           for c in event.get("choices") or ()):
                    continue
            elif '"content":"' not in line or '"content":""' in line:
                continue
            if last is None:
                result.ttft.append(now - start)
            else:
                result.itl.append(now - last)
            last = now
    if usage is None:
        result.errors += 1
        return
    result.requests += 1
    result.output_tokens += usage["completion_tokens"]


async def run_load(url: str, key: str, model: str, target: str, concurrency: int,
                   duration: float, max_tokens: int) -> Result:
    result = Result(target, concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}  # a worker needs no key
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300,
                                 headers=headers) as client:
        deadline = time.perf_counter() + duration

        async def user(i: int) -> None:
            n = i
            while time.perf_counter() < deadline:
                await one_stream(client, model, PROMPTS[n % len(PROMPTS)], max_tokens, result)
                n += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


def table(results: list[Result]) -> str:
    head = (f"{'target':<10}{'conc':>5}{'reqs':>7}{'err':>5}{'req/s':>8}{'out tok/s':>11}"
            f"{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}{'ITL p99':>9}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.target:<10}{r.concurrency:>5}{r.requests:>7}{r.errors:>5}{r.rps:>8.2f}"
            f"{r.tps:>11.1f}{pct(r.ttft, 50) * 1e3:>8.0f}ms{pct(r.ttft, 99) * 1e3:>8.0f}ms"
            f"{pct(r.itl, 50) * 1e3:>7.1f}ms{pct(r.itl, 99) * 1e3:>7.1f}ms"
        )
    return "\n".join(rows)


def bar_chart(rows: list[tuple[str, float]], unit: str, width: int = 50,
              fmt: str = ".1f") -> str:
    """A text bar per (label, value), scaled to the largest: the benchmarks' plots."""
    top = max((value for _, value in rows), default=0) or 1
    pad = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:>{pad}} {'#' * round(width * value / top):<{width}} "
                     f"{value:{fmt}} {unit}" for label, value in rows)


def plot(results: list[Result], width: int = 50) -> str:
    """Output tokens/s as a bar per target and concurrency: the table's story at a glance."""
    return bar_chart([(f"{r.target:>10} c={r.concurrency:<3}", r.tps) for r in results],
                     "tok/s", width)


def figure(results: list[Result], path: Path) -> None:
    """The PNG for `--plot`: output tokens/s, TTFT and ITL (p50 solid, p99 dashed) against
    concurrency, a line per target (or variant)."""
    from plots import Lines, save

    targets = list(dict.fromkeys(r.target for r in results))
    colours = {f"{t} p{q}": f"C{i}" for i, t in enumerate(targets) for q in (50, 99)}

    def per(target: str, value) -> list[tuple[float, float]]:
        return [(r.concurrency, value(r)) for r in results if r.target == target]

    def percentiles(values: str) -> dict[str, list[tuple[float, float]]]:
        return {f"{t} p{q}": per(t, lambda r, q=q: pct(getattr(r, values), q) * 1e3)
                for t in targets for q in (50, 99)}

    save(path, "Streaming chat: throughput and latency against concurrency", [
        Lines("concurrent streams", "output tokens/s", {t: per(t, lambda r: r.tps)
                                                        for t in targets}),
        Lines("concurrent streams", "time to first token (ms)", percentiles("ttft"),
              log_y=True, dashed={f"{t} p99" for t in targets}, colours=colours),
        Lines("concurrent streams", "inter-token latency (ms)", percentiles("itl"),
              log_y=True, dashed={f"{t} p99" for t in targets}, colours=colours),
    ], panel_size=(4.8, 3.6))


def chat_only_stack(configs: list[Path], model: str, workdir: Path):
    """`serving up` with only the chat worker: the others would only compete for the cores.
    Returns the stack and the chat worker's name."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support
    from serving.config import load_config
    from tests.support.harness import start_background_stack

    workers = load_config(configs).workers
    chat = next(n for n, w in workers.items() if model in w.entry.names())
    overlay = {"workers": {n: {"enabled": False} for n in workers if n != chat}}
    (workdir / "chat-only.yaml").write_text(json.dumps(overlay))
    print(f"starting stack ({workdir / 'stack.log'})...", file=sys.stderr)
    return start_background_stack([*configs, workdir / "chat-only.yaml"], workdir), chat


def measure(urls: dict[str, str], key: str, targets: list[str], args: argparse.Namespace,
            label: str | None = None) -> list[Result]:
    """One round of every concurrency against each target (labelled `label` if given)."""
    results = []
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        if args.warmup:
            asyncio.run(run_load(urls[targets[0]], key, args.model, targets[0],
                                 concurrency, args.warmup, args.max_tokens))
        merged = {t: Result(label or t, concurrency) for t in targets}
        for round_ in range(1 if label else args.rounds):
            # Alternate the order too, so drift on a shared machine hits both alike.
            order = targets if round_ % 2 == 0 else targets[::-1]
            for target in order:
                r = asyncio.run(run_load(urls[target], key, args.model, target,
                                         concurrency, args.duration, args.max_tokens))
                print(f"  {label or target} c={concurrency} round {round_ + 1}: "
                      f"{r.tps:.1f} tok/s", file=sys.stderr)
                merged[target].merge(r)
        results += merged.values()
    return results


def run_variants(args: argparse.Namespace, variants: list[tuple[str, Path]]) -> list[Result]:
    """Each round starts one stack per variant (alternating the order) and measures it."""
    merged: dict[tuple[str, int], Result] = {}
    for round_ in range(args.rounds):
        for name, overlay in variants if round_ % 2 == 0 else variants[::-1]:
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-chat-{name}-"))
            stack, chat = chat_only_stack([*args.config, overlay], args.model, workdir)
            urls = {"router": stack.base_url, "direct": stack.worker_url(chat)}
            try:
                for r in measure(urls, stack.key, [args.target], args, label=name):
                    if (name, r.concurrency) in merged:
                        merged[name, r.concurrency].merge(r)
                    else:
                        merged[name, r.concurrency] = r
            finally:
                stack.stop()
    order = [name for name, _ in variants]
    return sorted(merged.values(), key=lambda r: (r.concurrency, order.index(r.target)))


def run_targets(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[Result]:
    """The given targets (router, direct) on one stack, in alternating rounds."""
    stack = None
    if args.config:
        stack, chat = chat_only_stack(args.config, args.model,
                                      Path(tempfile.mkdtemp(prefix="bench-chat-")))
        args.url, args.key = stack.base_url, stack.key
        args.direct_url = stack.worker_url(chat)
    urls = {"router": args.url, "direct": args.direct_url}
    targets = ["direct", "router"] if args.compare else [args.target]
    for target in targets:
        if not urls[target]:
            p.error(f"--{'url' if target == 'router' else 'direct-url'} (or -c) is needed")
    try:
        return measure(urls, args.key, targets, args)
    finally:
        if stack is not None:
            stack.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path,
                   help="start a stack from these config files (else use --url/--direct-url)")
    p.add_argument("--url", help="router base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--direct-url", help="vLLM worker base URL (for --target direct/--compare)")
    p.add_argument("--key", default="", help="API key for the router")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--target", choices=["router", "direct"], default="router")
    p.add_argument("--compare", action="store_true", help="run both targets and print ratios")
    p.add_argument("--concurrency", default="16", help="comma-separated, e.g. 1,4,16")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per target")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--plot", type=Path, help="also write a PNG of the results here")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERLAY",
                   help="compare deployments: the stack from -c plus this overlay (repeatable)")
    p.add_argument("--image", help="send this picture with every prompt: a file, or WxH for "
                   "random pixels (vision models)")
    args = p.parse_args()
    variants = [(v.partition("=")[0], Path(v.partition("=")[2])) for v in args.variant]
    if variants and (not args.config or args.compare):
        p.error("--variant needs -c, and compares one --target, not --compare")
    if args.image:
        PROMPTS[:] = with_image(args.image)

    results = run_variants(args, variants) if variants else run_targets(p, args)

    print(table(results))
    print()
    print(plot(results))
    if args.plot:
        figure(results, args.plot)
    if variants:
        print()
        base = variants[0][0]
        for r in results:
            first = next(x for x in results if x.target == base and x.concurrency == r.concurrency)
            if r.target != base and first.tps:
                print(f"{r.target}/{base} at {r.concurrency:>3} streams: output tok/s "
                      f"{r.tps / first.tps:.2f}x, TTFT p50 "
                      f"{pct(r.ttft, 50) / pct(first.ttft, 50):.2f}x")
    if args.compare:
        print()
        for concurrency in sorted({r.concurrency for r in results}):
            d, r = (next(x for x in results if x.target == t and x.concurrency == concurrency)
                    for t in ("direct", "router"))
            print(f"router/direct at {concurrency:>3} streams: output tok/s "
                  f"{r.tps / d.tps:.3f}, req/s {r.rps / d.rps:.3f}, "
                  f"TTFT p50 {pct(r.ttft, 50) / pct(d.ttft, 50):.2f}x")
    if args.json:
        args.json.write_text(json.dumps([
            {"target": r.target, "concurrency": r.concurrency, "requests": r.requests,
             "errors": r.errors, "req_per_s": r.rps, "output_tok_per_s": r.tps,
             "ttft_p50": pct(r.ttft, 50), "ttft_p99": pct(r.ttft, 99),
             "itl_p50": pct(r.itl, 50), "itl_p99": pct(r.itl, 99)} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
