"""Video rendering throughput: seconds of video rendered per wall-clock second.

Starts the video worker (and the router) from the given config, submits N jobs through the
asynchronous API, polls them to completion and reports the render rate and job latencies.

    python scripts/bench_videos.py -c configs/cpu.yaml --jobs 6 --size 128x128
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from anywhere
from tests.support.harness import start_background_stack


def figure(result: dict, done_after: list[float], path: Path) -> None:
    """The PNG for `--plot`: jobs completed against seconds since they were submitted."""
    from plots import Lines, save

    steps = [(0.0, 0)] + [(t, n) for n, t in enumerate(sorted(done_after), 1)]
    save(path, f"Videos: {result['jobs']} jobs of {result['model']}, "
         f"{result['video_s_per_wall_s']:.3f} s of video per second", [
             Lines("seconds since submitting", "jobs completed", {"completed": steps})])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", action="append", type=Path, required=True)
    p.add_argument("--worker", default="videos", help="the video worker's name in the config")
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--size", default=None)
    p.add_argument("--seconds", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="also write a PNG of the results here")
    args = p.parse_args()

    from serving.config import load_config

    config = load_config(args.config)
    model = config.workers[args.worker].model
    overlay = {"workers": {n: {"enabled": False} for n in config.workers if n != args.worker},
               "router": {"videos": {"max_queued_per_key": max(args.jobs, 1)}}}
    workdir = Path(tempfile.mkdtemp(prefix="bench-videos-"))
    (workdir / "overlay.yaml").write_text(json.dumps(overlay | {"state_dir": str(workdir)}))
    body: dict = {"model": model, "prompt": "a paper boat drifting down a stream"}
    for key, value in (("size", args.size), ("seconds", args.seconds),
                       ("num_inference_steps", args.steps)):
        if value is not None:
            body[key] = value

    print("starting stack...", file=sys.stderr)
    stack = start_background_stack([*args.config, workdir / "overlay.yaml"], workdir)
    try:
        http = httpx.Client(base_url=stack.base_url, timeout=120,
                            headers={"Authorization": f"Bearer {stack.key}"})
        start = time.perf_counter()
        jobs = {http.post("/v1/videos", json=body).json()["id"]: start
                for _ in range(args.jobs)}
        done: dict[str, float] = {}
        while len(done) < len(jobs):
            for job_id in jobs.keys() - done.keys():
                status = http.get(f"/v1/videos/{job_id}").json()["status"]
                if status in ("completed", "failed"):
                    done[job_id] = time.perf_counter()
                    if status == "failed":
                        print(f"  {job_id} failed", file=sys.stderr)
            time.sleep(0.1)
        wall = max(done.values()) - start
        video_seconds = 0.0
        for job_id in jobs:
            content = http.get(f"/v1/videos/{job_id}/content")
            if content.status_code == 200:
                with av.open(io.BytesIO(content.content)) as container:
                    stream = container.streams.video[0]
                    frames = sum(1 for _ in container.decode(video=0))
                    video_seconds += frames / float(stream.average_rate)
    finally:
        stack.stop()

    latencies = sorted(done[j] - jobs[j] for j in jobs)
    result = {"model": model, "jobs": args.jobs, "request": body, "wall_s": wall,
              "video_s": video_seconds, "video_s_per_wall_s": video_seconds / wall,
              "first_done_s": latencies[0], "last_done_s": latencies[-1]}
    print(f"model {model}: {args.jobs} jobs, {video_seconds:.1f} s of video in {wall:.1f} s "
          f"-> {result['video_s_per_wall_s']:.3f} s of video per wall-clock second "
          f"(first job done after {latencies[0]:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        figure(result, latencies, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
