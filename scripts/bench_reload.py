"""Swapping the chat worker's engine args under a steady load, blue/green and drain-first.

For each mode, starts the stack (chat only) from the given config, sends short chats from C
clients without pause, and after `--before` seconds edits an overlay (`max_num_seqs` moves) and
asks for a reload (`POST /v1/admin/reload`). It reports, per mode:
- requests failed, and 503 `model_reloading` answers (with their Retry-After);
- latency p50 and p99 before the reload, during it, and after it;
- seconds from the reload request until the new worker serves (the runtime file names it),
  and the gap in which the model answered 503 (drain-first).

Drain-first is forced with `reload_strategy: drain_first` (on a GPU, a config whose memory
plan cannot hold the old and new worker together gets it from `auto`).

    python scripts/bench_reload.py -c configs/cpu.yaml --clients 2 --before 20 --after 20 \\
        --plot docs/img/reload.png
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support.harness import start_background_stack

MODEL = "smollm2-135m-instruct"
BODY = {"model": MODEL, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hi."}]}


@dataclass
class Sample:
    sent: float  # seconds since the load began
    latency: float
    status: int
    retry_after: str | None = None


@dataclass
class Run:
    mode: str
    samples: list[Sample] = field(default_factory=list)
    asked: float = 0.0  # when the reload was asked for
    serving: float | None = None  # when the runtime file named the new worker
    applied: float | None = None


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else 0.0


def overlay(path: Path, mode: str, seqs: int) -> None:
    path.write_text(f"""workers:
  chat: {{reload_strategy: {mode}, engine_args: {{max_num_seqs: {seqs}}}}}
  images: {{enabled: false}}
  edits: {{enabled: false}}
  videos: {{enabled: false}}
  speech: {{enabled: false}}
  transcription: {{enabled: false}}
""")


async def load(base: str, key: str, clients: int, stop: asyncio.Event, run: Run,
               t0: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=300,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        async def client() -> None:
            while not stop.is_set():
                sent = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", json=BODY)
                    status, retry = r.status_code, r.headers.get("retry-after")
                except httpx.HTTPError:
                    status, retry = 0, None
                run.samples.append(Sample(sent - t0, time.perf_counter() - sent, status, retry))
                if status == 503:
                    await asyncio.sleep(0.1)  # a client honouring "retry shortly"

        await asyncio.gather(*(client() for _ in range(clients)))


async def measure(mode: str, configs: list[Path], args: argparse.Namespace) -> Run:
    work = Path(tempfile.mkdtemp(prefix=f"bench-reload-{mode}-"))
    path = work / "bench.yaml"
    overlay(path, mode, 64)
    stack = start_background_stack([*configs, path], work)
    run, stop = Run(mode), asyncio.Event()
    try:
        runtime = work / "runtime.json"
        old_pid = json.loads(runtime.read_text())["workers"]["chat"]["pid"]
        t0 = time.perf_counter()
        loader = asyncio.create_task(load(stack.base_url, stack.key, args.clients, stop,
                                          run, t0))
        await asyncio.sleep(args.before)
        overlay(path, mode, 32)
        admin = {"Authorization": f"Bearer {stack.admin_key}"}
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60,
                                     headers=admin) as http:
            run.asked = time.perf_counter() - t0
            reload_id = (await http.post("/v1/admin/reload")).json()["id"]
            while run.applied is None:
                await asyncio.sleep(0.2)
                info = json.loads(runtime.read_text())
                if run.serving is None and info["workers"]["chat"]["pid"] != old_pid:
                    run.serving = time.perf_counter() - t0
                status = (await http.get("/v1/admin/reload")).json()
                if status["id"] == reload_id and status["status"] != "pending":
                    assert status["status"] == "applied", status
                    run.applied = time.perf_counter() - t0
        await asyncio.sleep(args.after)
        stop.set()
        await loader
    finally:
        stack.stop()
    return run


def summary(run: Run) -> dict:
    assert run.applied is not None
    phases = {"before": lambda s: s.sent < run.asked,
              "during": lambda s: run.asked <= s.sent < run.applied,
              "after": lambda s: s.sent >= run.applied}
    out: dict = {"mode": run.mode}
    for phase, within in phases.items():
        ok = [s.latency for s in run.samples if within(s) and s.status == 200]
        out[f"{phase}_p50_s"], out[f"{phase}_p99_s"] = pct(ok, 50), pct(ok, 99)
    reloading = [s for s in run.samples if s.status == 503]
    out["requests"] = len(run.samples)
    out["failed"] = sum(s.status not in (200, 503) for s in run.samples) + sum(
        s.retry_after is None for s in reloading)
    out["503_reloading"] = len(reloading)
    out["gap_s"] = (max(s.sent for s in reloading) - min(s.sent for s in reloading)
                    if reloading else 0.0)
    out["to_new_worker_s"] = (run.serving or run.applied) - run.asked
    out["applied_s"] = run.applied - run.asked
    return out


def table(rows: list[dict]) -> str:
    cols = ["mode", "requests", "failed", "503_reloading", "gap_s", "to_new_worker_s",
            "before_p50_s", "before_p99_s", "during_p50_s", "during_p99_s", "after_p50_s",
            "after_p99_s"]
    lines = [" | ".join(cols), " | ".join("---" for _ in cols)]
    for row in rows:
        lines.append(" | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                for c in cols))
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    """Each request's latency against when it was sent, a panel per mode, with the reload
    request and the moment the new worker serves marked."""
    from plots import Timeline, save

    panels = []
    for run in runs:
        marks = {"reload asked": run.asked}
        if run.serving is not None:
            marks["new worker serves"] = run.serving
        panels.append(Timeline(
            "latency (s)", title=run.mode, x_label="seconds since the load began", marks=marks,
            points={"200": [(s.sent, s.latency) for s in run.samples if s.status == 200],
                    "503 model_reloading": [(s.sent, s.latency) for s in run.samples
                                            if s.status != 200]}))
    save(path, "Chat latency across a reload", panels, columns=1, panel_size=(9, 3.2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path, required=True)
    p.add_argument("--modes", default="blue_green,drain_first")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--before", type=float, default=20.0)
    p.add_argument("--after", type=float, default=20.0)
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--plot", type=Path, help="write a PNG of latency over time here")
    args = p.parse_args()
    runs = [asyncio.run(measure(mode, args.config, args)) for mode in args.modes.split(",")]
    rows = [summary(run) for run in runs]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
