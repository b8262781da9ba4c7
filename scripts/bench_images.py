"""Image generation throughput and latency, with request batching on and off.

Starts the image worker (and the router) twice from the given config, once with the catalog's
batch size and once with `max_batch_size: 1`, and runs C concurrent clients for T seconds
against each, through the router. Prints images/s and p50/p99 latency side by side.

    python scripts/bench_images.py -c configs/cpu.yaml --concurrency 1,4,8 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support.harness import start_background_stack


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else 0.0


async def load(url: str, key: str, body: dict, concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        deadline = time.perf_counter() + duration

        async def user() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                r = await client.post("/v1/images/generations", json=body)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    images = len(latencies) * body.get("n", 1)
    return {"concurrency": concurrency, "images": images, "errors": errors,
            "images_per_s": images / elapsed, "p50_s": pct(latencies, 50),
            "p99_s": pct(latencies, 99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path, required=True)
    p.add_argument("--worker", default="images", help="the image worker's name in the config")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--size", default=None, help="default: the model's default size")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from serving.config import load_config

    config = load_config(args.config)
    model = config.workers[args.worker].model
    others = [name for name in config.workers if name != args.worker]
    body: dict = {"model": model, "prompt": "a watercolour of a harbour at dawn"}
    if args.size:
        body["size"] = args.size
    if args.steps:
        body["num_inference_steps"] = args.steps

    rows = []
    for mode, batch in (("batched", None), ("unbatched", 1)):
        workdir = Path(tempfile.mkdtemp(prefix="bench-images-"))
        overlay = {"workers": {name: {"enabled": False} for name in others}}
        if batch is not None:
            overlay["workers"][args.worker] = {"engine_args": {"max_batch_size": batch}}
        (workdir / "overlay.yaml").write_text(json.dumps(overlay))
        print(f"starting stack ({mode})...", file=sys.stderr)
        stack = start_background_stack([*args.config, workdir / "overlay.yaml"], workdir)
        try:
            asyncio.run(load(stack.base_url, stack.key, body, 2, 3.0))  # warm-up
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                row = asyncio.run(load(stack.base_url, stack.key, body, concurrency,
                                       args.duration))
                row["mode"] = mode
                rows.append(row)
                print(f"  {mode} c={concurrency}: {row['images_per_s']:.2f} images/s",
                      file=sys.stderr)
        finally:
            stack.stop()

    print(f"model {model}, size {body.get('size', 'default')}, "
          f"steps {body.get('num_inference_steps', 'default')}")
    print(f"{'mode':<10}{'conc':>5}{'images':>8}{'err':>5}{'images/s':>10}{'p50':>9}{'p99':>9}")
    for r in rows:
        print(f"{r['mode']:<10}{r['concurrency']:>5}{r['images']:>8}{r['errors']:>5}"
              f"{r['images_per_s']:>10.2f}{r['p50_s'] * 1e3:>7.0f}ms{r['p99_s'] * 1e3:>7.0f}ms")
    print()
    for concurrency in sorted({r["concurrency"] for r in rows}):
        on, off = (next(r for r in rows if r["mode"] == m and r["concurrency"] == concurrency)
                   for m in ("batched", "unbatched"))
        print(f"batched/unbatched images/s at {concurrency}: "
              f"{on['images_per_s'] / off['images_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
