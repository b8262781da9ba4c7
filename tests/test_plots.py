"""scripts/plots.py, the benchmarks' charts, and the scripts' `plot` functions drawn from small
synthetic tables: each writes a real PNG, labelled with this machine's CPU."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import plots
import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is only {len(data)} bytes: nothing drawn?"
    from PIL import Image

    with Image.open(path) as image:
        image.verify()


def test_cpu_label_names_this_machines_cpu():
    label = plots.cpu_label()
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    if model:
        assert label.startswith(model.group(1).strip())
    assert re.search(r"\b\d+ cores\b", label)
    assert "cpu_dtype=" in label


def test_lines_throughput_and_percentiles(tmp_path):
    out = plots.save(tmp_path / "chat.png", "Chat", [
        plots.Lines("streams", "output tok/s",
                    {"direct": [(1, 24.1), (4, 83.4), (16, 239.3)],
                     "router": [(1, 24.1), (4, 85.9), (16, 239.0)]}),
        plots.Lines("streams", "TTFT (ms)", log_y=True, dashed={"router p99"},
                    series={"router p50": [(1, 63), (4, 128), (16, 245)],
                            "router p99": [(1, 74), (4, 156), (16, 1418)]}),
    ])
    assert out == tmp_path / "chat.png"
    assert_png(out)


def test_bars_with_marked_bars_and_a_single_series(tmp_path):
    hit_rate = {"round_robin": {"hit rate": 0.31}, "cache_aware": {"hit rate": 0.88}}
    runs = {"snippet": {"run 1": 0.4, "run 2": 105.0}, "agent": {"run 1": 2.5}}
    plots.save(tmp_path / "bars.png", "Bars", [
        plots.Bars("hit rate", hit_rate, title="prefix cache"),
        plots.Bars("seconds", runs, marked=[("snippet", "run 2")], log_y=True),
    ], columns=1)
    assert_png(tmp_path / "bars.png")


def test_timeline_and_an_empty_series(tmp_path):
    plots.save(tmp_path / "t.png", "Reload", [plots.Timeline(
        "latency (s)", {"200": [(0.1, 0.2), (1.0, 0.3)], "503": []},
        marks={"reload asked": 0.5, "new worker serves": 0.9})])
    assert_png(tmp_path / "t.png")


def test_the_ported_scripts_draw_their_tables(tmp_path):
    import bench_first_hour
    import bench_reload
    import bench_router_vs_direct

    bench_first_hour.plot([bench_first_hour.Run("readme snippet", 0.4, True, 12, "4"),
                           bench_first_hour.Run("agent, no settings", 9.0, False, 0, "x")],
                          tmp_path / "first.png")
    run = bench_reload.Run("blue_green", [bench_reload.Sample(0.1, 0.2, 200),
                                          bench_reload.Sample(0.6, 0.01, 503)], asked=0.5,
                           serving=0.8)
    bench_reload.plot([run, bench_reload.Run("drain_first", run.samples, asked=0.4)],
                      tmp_path / "reload.png")
    args = argparse.Namespace(rounds=2, concurrency=16, plot=tmp_path / "rvd.png")
    bench_router_vs_direct.plot({"router": [{"output_throughput": 230.0}] * 2,
                                 "direct": [{"output_throughput": 239.0}] * 2}, args)
    for name in ("first.png", "reload.png", "rvd.png"):
        assert_png(tmp_path / name)


def test_the_other_scripts_draw_their_tables(tmp_path):
    import bench_audio
    import bench_chat
    import bench_ledger
    import bench_router
    import bench_videos

    chat = []
    for target in ("direct", "router"):
        for concurrency in (1, 4):
            r = bench_chat.Result(target, concurrency, seconds=10, requests=4,
                                  output_tokens=400 * concurrency)
            r.ttft, r.itl = [0.06, 0.07, 0.2], [0.04, 0.05]
            chat.append(r)
    bench_chat.figure(chat, tmp_path / "chat.png")
    rows = []
    for workload in bench_router.WORKLOADS:
        for target in ("direct", "router"):
            r = bench_router.Result("sqlite", 1, workload, 32, target, seconds=5, requests=900,
                                    chunks=9000, latencies=[0.002, 0.003, 0.01])
            rows.append(r)
    bench_router.figure(rows, tmp_path / "router.png")
    bench_audio.figure([
        {"what": "transcription", "target": t, "concurrency": c, "req_per_s": 0.5 * c, "rtf": 0.2}
        for t in ("router", "direct") for c in (1, 4)] + [
        {"what": "speech (short, 44 chars)", "target": "router", "ttfb_s": 0.3, "rtf": 0.4,
         "audio_s": 3.0}], tmp_path / "audio.png")
    bench_videos.figure({"jobs": 2, "model": "wan-tiny", "video_s_per_wall_s": 0.05},
                        [4.0, 7.5], tmp_path / "videos.png")
    bench_ledger.figure({"SQLite": 40000.0, "PostgreSQL": 9000.0}, 700.0,
                        tmp_path / "ledger.png")
    for name in ("chat", "router", "audio", "videos", "ledger"):
        assert_png(tmp_path / f"{name}.png")


@pytest.mark.parametrize("script", ["bench_chat", "bench_router", "bench_audio", "bench_videos",
                                    "bench_ledger", "bench_first_hour", "bench_reload",
                                    "bench_router_vs_direct"])
def test_every_benchmark_takes_plot(script):
    """`--plot FILE` is in each script's usage; none imports matplotlib until it draws."""
    out = subprocess.run([sys.executable, f"scripts/{script}.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--plot" in out
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = ['.', 'scripts']; "
         f"import {script}; print('matplotlib' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert probe.strip() == "False"
