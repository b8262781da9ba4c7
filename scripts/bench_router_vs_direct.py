"""`vllm bench serve` (vLLM's own benchmark, random dataset) through the router and straight at
the chat worker, side by side in one run: the router's cost as vLLM measures it.

Starts the CPU stack's chat worker alone (or takes `--url`/`--key`/`--worker`), runs one
uncounted warm-up round on each target, then rounds alternating router and direct (ABBA
order), each `--num-prompts` requests at `--concurrency`, and prints requests, failures,
output tok/s and TTFT p50 per target and the router/direct output tok/s ratio.

    python scripts/bench_router_vs_direct.py --num-prompts 64 --concurrency 16 --plot out.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "smollm2-135m-instruct"


def bench(base_url: str, key: str | None, tokenizer: str, args, out: Path) -> dict:
    """One `vllm bench serve` run (through scripts/vllm_bench.py); its saved result."""
    cmd = [sys.executable, str(ROOT / "scripts/vllm_bench.py"), "bench", "serve",
           "--backend", args.backend, "--base-url", base_url, "--endpoint", args.endpoint,
           "--model", MODEL, "--tokenizer", tokenizer, "--dataset-name", "random",
           "--random-input-len", str(args.input_len), "--random-output-len",
           str(args.output_len), "--num-prompts", str(args.num_prompts),
           "--max-concurrency", str(args.concurrency), "--temperature", "0",
           "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
           "--disable-tqdm"]
    env = {"OPENAI_API_KEY": key} if key else {}
    import os

    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url"), parser.add_argument("--key"), parser.add_argument("--worker")
    parser.add_argument("--backend", default="openai-chat")
    parser.add_argument("--endpoint", default="/v1/chat/completions")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    stack = None
    if args.url:
        router, key, worker = args.url, args.key, args.worker
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_chat import chat_only_stack

        work = Path(tempfile.mkdtemp(prefix="bench-rvd-"))
        stack, chat = chat_only_stack([ROOT / "configs/cpu.yaml"], MODEL, work)
        router, key, worker = stack.base_url, stack.key, stack.worker_url(chat)
    try:
        tokenizer = httpx.get(worker + "/v1/models").json()["data"][0]["root"]
        results: dict[str, list[dict]] = {"router": [], "direct": []}
        out = Path(tempfile.mkdtemp(prefix="bench-rvd-results-"))
        targets = [("router", router, key), ("direct", worker, None)]
        for target, url, k in targets:  # warm-up, not counted: the first load of each path
            bench(url, k, tokenizer, args, out / f"warmup-{target}.json")
        for n in range(args.rounds):
            # ABBA order: neither target always runs first in a round.
            for target, url, k in targets if n % 2 == 0 else targets[::-1]:
                results[target].append(bench(url, k, tokenizer, args, out / f"{target}{n}.json"))
    finally:
        if stack is not None:
            stack.stop()
    table(results, args)
    if args.plot:
        plot(results, args)


def _sum(runs: list[dict], field: str) -> float:
    return sum(r.get(field) or 0 for r in runs)


def table(results: dict[str, list[dict]], args) -> None:
    print(f"vllm bench serve --dataset-name random, {args.num_prompts} prompts x "
          f"{args.rounds} rounds, concurrency {args.concurrency}, in {args.input_len} / out "
          f"{args.output_len} tokens, {args.backend}")
    print(f"{'target':<8} {'completed':>9} {'failed':>6} {'out tok':>8} {'out tok/s':>9} "
          f"{'TTFT p50 ms':>11}")
    rates = {}
    for target, runs in results.items():
        seconds = _sum(runs, "duration")
        rates[target] = _sum(runs, "total_output_tokens") / seconds
        ttft = sorted(r["median_ttft_ms"] for r in runs)[len(runs) // 2]
        print(f"{target:<8} {int(_sum(runs, 'completed')):>9} "
              f"{int(_sum(runs, 'failed')):>6} {int(_sum(runs, 'total_output_tokens')):>8} "
              f"{rates[target]:>9.1f} {ttft:>11.1f}")
    print(f"router/direct output tok/s: {rates['router'] / rates['direct']:.3f}")


def plot(results: dict[str, list[dict]], args) -> None:
    """Output tokens/s of each round, router and direct side by side."""
    from plots import Bars, save

    groups = {f"round {n + 1}": {target: runs[n]["output_throughput"]
                                 for target, runs in results.items()}
              for n in range(args.rounds)}
    save(args.plot, f"vllm bench serve, router vs direct, concurrency {args.concurrency}",
         [Bars("output tokens/s per round", groups)], panel_size=(6, 3.5))


if __name__ == "__main__":
    main()
