"""Image throughput and latency: batching on and off, or edits against generations.

By default, starts the image worker (and the router) twice from the given config, once with the
catalog's batch size and once with `max_batch_size: 1`, and runs C concurrent clients for T
seconds against each, through the router. Prints images/s and p50/p99 latency side by side.

With `--edits`, starts the generator and the editor (`--edit-worker`) once, both batched, and
at each concurrency runs generations then edits (a fixed input image of the output's size),
so the two sit side by side on the same machine state.

    python scripts/bench_images.py -c configs/cpu.yaml --concurrency 1,4,8 --duration 20
    python scripts/bench_images.py -c configs/cpu.yaml --edits --plot docs/img/edits.png
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support.harness import start_background_stack


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else 0.0


Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


def generation(body: dict) -> Send:
    return lambda client: client.post("/v1/images/generations", json=body)


def edit(body: dict, default_size: str) -> Send:
    """An edit of a fixed picture at the output's size (the model's default if unset)."""
    from PIL import Image

    width, height = map(int, body.get("size", default_size).split("x"))
    picture = Image.new("RGB", (width, height), (90, 120, 200))
    picture.paste((230, 200, 40), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    files = {"image": ("in.png", buf.getvalue(), "image/png")}
    fields = {k: str(v) for k, v in body.items()}
    return lambda client: client.post("/v1/images/edits", data=fields, files=files)


async def load(url: str, key: str, send: Send, n: int, concurrency: int,
               duration: float) -> dict:
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
                r = await send(client)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    images = len(latencies) * n
    return {"concurrency": concurrency, "images": images, "errors": errors,
            "images_per_s": images / elapsed, "p50_s": pct(latencies, 50),
            "p99_s": pct(latencies, 99)}


def start(configs: list[Path], keep: list[str], engine_args: dict[str, dict]):
    """The stack with only the workers in `keep`, `engine_args` overlaid per worker."""
    from serving.config import load_config

    workers = load_config(configs).workers
    workdir = Path(tempfile.mkdtemp(prefix="bench-images-"))
    overlay: dict = {"workers": {name: {"enabled": False} for name in workers
                                 if name not in keep}}
    for name, values in engine_args.items():
        overlay["workers"][name] = {"engine_args": values}
    (workdir / "overlay.yaml").write_text(json.dumps(overlay))
    return start_background_stack([*configs, workdir / "overlay.yaml"], workdir)


def run_modes(args, modes: list[tuple[str, dict[str, dict], Send]], keep: list[str],
              n: int) -> list[dict]:
    """Each (mode, engine args, request) at each concurrency; modes with the same engine
    args share one stack, alternating at each concurrency."""
    rows = []
    for engine_args in {json.dumps(m[1], sort_keys=True): m[1] for m in modes}.values():
        group = [m for m in modes if m[1] == engine_args]
        print(f"starting stack ({', '.join(m[0] for m in group)})...", file=sys.stderr)
        stack = start(args.config, keep, engine_args)
        try:
            for _, _, send in group:  # warm-up
                asyncio.run(load(stack.base_url, stack.key, send, n, 2, 3.0))
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                for mode, _, send in group:
                    row = asyncio.run(load(stack.base_url, stack.key, send, n, concurrency,
                                           args.duration))
                    rows.append({**row, "mode": mode})
                    print(f"  {mode} c={concurrency}: {row['images_per_s']:.2f} images/s",
                          file=sys.stderr)
        finally:
            stack.stop()
    return rows


def table(rows: list[dict], modes: list[str]) -> str:
    lines = [f"{'mode':<12}{'conc':>5}{'images':>8}{'err':>5}{'images/s':>10}{'p50':>9}"
             f"{'p99':>9}"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], modes.index(r["mode"]))):
        lines.append(f"{r['mode']:<12}{r['concurrency']:>5}{r['images']:>8}{r['errors']:>5}"
                     f"{r['images_per_s']:>10.2f}{r['p50_s'] * 1e3:>7.0f}ms"
                     f"{r['p99_s'] * 1e3:>7.0f}ms")
    lines.append("")
    first, second = modes
    for concurrency in sorted({r["concurrency"] for r in rows}):
        a, b = (next(r for r in rows if r["mode"] == m and r["concurrency"] == concurrency)
                for m in modes)
        lines.append(f"{first}/{second} images/s at {concurrency}: "
                     f"{a['images_per_s'] / max(b['images_per_s'], 1e-9):.2f}x")
    return "\n".join(lines)


def plot(rows: list[dict], modes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from serving.config.hardware import describe_cpu

    levels = sorted({r["concurrency"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        values = [next(r["images_per_s"] for r in rows
                       if r["mode"] == mode and r["concurrency"] == c) for c in levels]
        ax.bar([x + i * width for x in range(len(levels))], values, width, label=mode)
    ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(levels))],
                  [f"{c} clients" for c in levels])
    ax.set_ylabel("images/s")
    ax.legend()
    fig.suptitle(f"{title} ({describe_cpu()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path, required=True)
    p.add_argument("--worker", default="images", help="the image worker's name in the config")
    p.add_argument("--edits", action="store_true", help="edits against generations")
    p.add_argument("--edit-worker", default="edits", help="the editor's name in the config")
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--size", default=None, help="default: the model's default size")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="write a PNG bar chart of images/s here")
    args = p.parse_args()

    from serving.config import load_config

    workers = load_config(args.config).workers
    body: dict = {"prompt": "a watercolour of a harbour at dawn"}
    if args.size:
        body["size"] = args.size
    if args.steps:
        body["num_inference_steps"] = args.steps
    gen = generation({"model": workers[args.worker].model, **body})
    if args.edits:
        editor, entry = workers[args.edit_worker].model, workers[args.edit_worker].entry
        assert entry is not None and entry.image is not None
        modes = [("edits", {}, edit({"model": editor, **body}, entry.image.default_size)),
                 ("generations", {}, gen)]
        keep, title = [args.worker, args.edit_worker], f"edits ({editor}) vs generations"
    else:
        modes = [("batched", {}, gen), ("unbatched", {args.worker: {"max_batch_size": 1}}, gen)]
        keep, title = [args.worker], "batching on and off"
    rows = run_modes(args, modes, keep, n=1)
    names = [m[0] for m in modes]
    print(f"{title}; size {body.get('size', 'default')}, "
          f"steps {body.get('num_inference_steps', 'default')}")
    print(table(rows, names))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, names, title, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
