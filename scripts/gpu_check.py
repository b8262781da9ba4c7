"""What a GPU machine can prove about the GPU path, in one short run (under 10 minutes).

Meant for a lent GPU box without internet or vLLM (one H200, Python 3.12, torch cu130,
transformers and accelerate preinstalled): the diffusers workers on CUDA with tiny pipelines
built on the spot, ctranslate2 (Whisper's engine) on CUDA, and the router in front of a GPU image
worker answering `images.generate` through the openai client. Each check prints PASS or FAIL
with what it measured; a JSON report goes to --out (default $OUT, else the current folder).

    # here: wheels the box lacks, and a tiny CTranslate2 Whisper (its tokenizer comes from the
    # installed whisper-tiny.en), each part under the 64 MiB a call may carry:
    python scripts/gpu_check.py tiny-whisper .cache/gpu/whisper
    pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 -d .cache/gpu/wheels-media diffusers av pydantic \
        pydantic-core annotated-types typing-inspection fastapi starlette uvicorn h11 httpx \
        httpcore anyio sniffio openai distro jiter prometheus-client redis    # ~50 MB
    pip download ... -d .cache/gpu/wheels-ct2 ctranslate2==4.8.5                  # ~43 MB
    # there, from the repo root (carry the wheels folder and .cache/gpu/whisper):
    pip install --no-index --find-links .cache/gpu/wheels-media .cache/gpu/wheels-media/*.whl
    python3 scripts/gpu_check.py media
    python3 scripts/gpu_check.py kontext     # ~4 minutes; needs ~45 GiB of GPU memory
    pip install --no-index --no-deps .cache/gpu/wheels-ct2/*.whl
    python3 scripts/gpu_check.py ctranslate2 --whisper .cache/gpu/whisper

`kontext` (scripts/gpu_kontext.py) builds FLUX.1 Kontext [dev] at full size with random weights
and times an edit at 1024x1024, a batch, and the offloaded pipeline, each with its peak reserved
memory beside the plan's figure; it needs only the media wheels.

`media` runs: bf16 image pipeline, a batch of 4, a render cancelled at step 2 leaving the
pipeline usable, the same seed twice giving identical bytes, peak memory; the Wan pipeline with
`offload: model` stopped mid-render giving its memory back; the router + image worker through
`serving up` (driver preflight, memory plan from the device). `ctranslate2` loads a Whisper on
CUDA and encodes: without CUDA 12's cuBLAS on the box it fails with "libcublas.so.12", which
reproduces the issue's transcription defect and shows that the worker's warm-up would catch it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS: list[dict[str, Any]] = []
DEVICE = "cuda"  # --device cpu: a dry run of the script's own logic on a machine without a GPU


def check(name: str, run: Callable[[], dict[str, Any] | None]) -> bool:
    start = time.monotonic()
    try:
        facts = run() or {}
        ok = True
    except Exception as e:
        facts = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        ok = False
    facts["seconds"] = round(time.monotonic() - start, 2)
    RESULTS.append({"check": name, "ok": ok, **facts})
    shown = {k: v for k, v in facts.items() if k != "trace"}
    print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(shown)}", flush=True)
    return ok


def _catalog(model: str):
    from serving.config import load_catalog

    return load_catalog(ROOT / "models")[model]


def _spec(name: str, model: str, path: Path, **args: Any):
    from serving.workers.spec import MediaWorkerSpec

    entry = _catalog(model)
    return MediaWorkerSpec(name=name, device=DEVICE, model_path=path, entry=entry,
                           args={**entry.engine_defaults, "threads": None, **args})


def media_checks(work: Path) -> None:
    import torch

    from serving.protocol.images import ImageParams
    from serving.weights.tiny import build_tiny_flux, build_tiny_wan
    from serving.workers.diffusion import Cancelled, load_pipeline
    from serving.workers.images.engine import ImageEngine, ImageJob
    from serving.workers.warmup import smallest_size, warm_up_images

    gib = 2**30
    state: dict[str, Any] = {}
    cuda = DEVICE == "cuda"

    def peak() -> dict[str, Any]:
        if not cuda:
            return {}
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 3),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 3)}

    def device() -> dict[str, Any]:
        from serving.launcher.preflight import check_driver, driver_version

        version = driver_version()
        check_driver(version)
        free, total = torch.cuda.mem_get_info()
        return {"gpu": torch.cuda.get_device_name(0), "driver": version,
                "torch": torch.__version__, "cuda": torch.version.cuda,
                "total_gib": round(total / gib, 1), "free_gib": round(free / gib, 1)}

    def image_pipeline() -> dict[str, Any]:
        build_tiny_flux(work / "flux", seed=0)
        spec = _spec("images", "flux-tiny", work / "flux", dtype="bfloat16", max_batch_size=4)
        engine = ImageEngine(load_pipeline(spec))
        param = next(engine.pipe.transformer.parameters())
        assert param.dtype == torch.bfloat16 and param.device.type == DEVICE, param
        warm_up_images("images", engine, spec.entry)
        state["engine"], state["entry"] = engine, spec.entry
        return {"dtype": str(param.dtype), "device": str(param.device)}

    def params(seed: int, steps: int = 2, n: int = 1) -> ImageParams:
        w, h = smallest_size(state["entry"].image.sizes)
        return ImageParams(prompt="a red circle", n=n, width=w, height=h, steps=steps,
                           guidance=0.0, seed=seed)

    def batch_of_4() -> dict[str, Any]:
        engine: ImageEngine = state["engine"]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        jobs = [engine.new_job(params(seed)) for seed in range(4)]
        engine.generate(jobs)
        pngs = [job.images[0] for job in jobs]
        assert all(p.startswith(b"\x89PNG") for p in pngs) and len(set(pngs)) == 4
        return peak()

    def cancel_at_step_2() -> dict[str, Any]:
        engine: ImageEngine = state["engine"]

        class CancelAtStep2(ImageJob):
            """Reads as cancelled from the second step's callback on."""

            reads = 0

            @property
            def cancelled(self) -> bool:
                self.reads += 1
                return self.reads >= 2

            @cancelled.setter
            def cancelled(self, _: bool) -> None:
                pass

        job = CancelAtStep2(params(1, steps=4), 1)
        try:
            engine.generate([job])
        except Cancelled:
            pass
        else:
            raise AssertionError("the render was not cancelled")
        assert job.reads == 2, f"stopped after {job.reads} steps"
        after = engine.new_job(params(1, steps=4))
        engine.generate([after])
        fresh = engine.new_job(params(1, steps=4))
        engine.generate([fresh])
        assert after.images == fresh.images, "the pipeline changed after a cancelled render"
        return {"stopped_at_step": job.reads}

    def same_seed_same_bytes() -> dict[str, Any]:
        engine: ImageEngine = state["engine"]
        first, second = engine.new_job(params(7)), engine.new_job(params(7))
        engine.generate([first])
        engine.generate([second])
        assert first.images == second.images
        return {"png_bytes": len(first.images[0])}

    def wan_offload_cancel() -> dict[str, Any]:
        from serving.protocol.videos import VideoParams
        from serving.workers.videos.engine import VideoEngine
        from serving.workers.warmup import warm_up_video

        build_tiny_wan(work / "wan", seed=0)
        spec = _spec("videos", "wan-tiny", work / "wan", dtype="bfloat16", vae_dtype="float32",
                     offload="model")
        engine = VideoEngine(load_pipeline(spec))
        warm_up_video("videos", engine, spec.entry)
        calls = {"n": 0}

        def stop_at_2() -> bool:
            calls["n"] += 1
            return calls["n"] > 2  # checked before the render and after each step

        p = VideoParams(prompt="a red circle", width=128, height=128, seconds=1, fps=8,
                        num_frames=9, steps=6, guidance=1.0, seed=3)
        try:
            engine.render(p, work / "cancelled.mp4", lambda _: None, stop_at_2)
        except Cancelled:
            pass
        else:
            raise AssertionError("the render was not cancelled")
        where = next(engine.pipe.transformer.parameters()).device.type
        assert where == "cpu", f"the transformer stayed on {where} after a cancelled render"
        frames = engine.render(p, work / "done.mp4", lambda _: None, lambda: False)
        return {"transformer_after_cancel": where, "frames": frames, **peak()}

    if cuda:
        check("cuda device and driver", device)
    if check("image pipeline in bf16 on cuda, warmed up", image_pipeline):
        check("a batch of 4 images", batch_of_4)
        check("a render cancelled at step 2 leaves the pipeline usable", cancel_at_step_2)
        check("the same seed twice, unbatched, gives identical bytes", same_seed_same_bytes)
    check("Wan with offload: model, cancelled mid-render, gives the GPU back", wan_offload_cancel)
    check("router + GPU image worker answer images.generate (openai client)",
          lambda: router_check(work))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def router_check(work: Path) -> dict[str, Any]:
    from openai import OpenAI

    config = work / "gpu-probe.yaml"
    config.write_text(
        f"device: {DEVICE}\ncatalog_dir: {ROOT / 'models'}\n"
        "gpu: {kind: probe, count: 1}  # memory read from the device\n"
        "workers:\n"
        "  images: {model: flux-tiny, gpus: [0], engine_args: {dtype: bfloat16, threads: null}}\n")
    key = "sk-gpu-" + secrets.token_hex(8)
    runtime = work / "runtime.json"
    log = work / "stack.log"
    env = {**os.environ, "SERVING_API_KEYS": key, "SERVING_STATE_DIR": str(work / "state"),
           "SERVING_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        stack = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "up", "-c", str(config), "--port",
             str(_free_port()), "--runtime-file", str(runtime)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not runtime.exists():
            if stack.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("stack did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
        url = json.loads(runtime.read_text())["router"]
        client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        result = client.images.generate(model="flux-tiny", prompt="a red circle", n=2,
                                        size="128x128")
        pngs = [base64.b64decode(d.b64_json or "") for d in result.data]
        assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
        plan = [line for line in log.read_text().splitlines() if line.startswith("GPU 0")]
        return {"images": len(pngs), "plan": plan[:1]}
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(60)
        except subprocess.TimeoutExpired:
            stack.kill()


def ctranslate2_checks(whisper: Path) -> None:
    def load_and_encode() -> dict[str, Any]:
        import ctranslate2
        import numpy as np

        count = ctranslate2.get_cuda_device_count()
        assert count >= 1 or DEVICE == "cpu", "ctranslate2 sees no CUDA device"
        model = ctranslate2.models.Whisper(str(whisper), device=DEVICE,
                                           compute_type="float16" if DEVICE == "cuda" else "int8")
        features = np.random.default_rng(0).random((1, 80, 3000), dtype=np.float32)
        out = model.encode(ctranslate2.StorageView.from_array(features))
        return {"ctranslate2": ctranslate2.__version__, "cuda_devices": count,
                "encoder_output": list(out.shape)}

    check("ctranslate2 loads Whisper on CUDA and runs its encoder (cuBLAS 12)", load_and_encode)


def tiny_whisper(out: Path) -> None:
    """A random 1-layer Whisper in CTranslate2 format (~15 MB) with whisper-tiny.en's tokenizer:
    enough for ctranslate2 to run real CUDA kernels on a box without models."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    from serving.weights.prepare import package_path

    source = package_path(_catalog("whisper-tiny.en").source)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80)
        WhisperForConditionalGeneration(config).save_pretrained(tmp)
        WhisperTokenizerFast(tokenizer_file=str(source / "tokenizer.json")).save_pretrained(tmp)
        TransformersConverter(tmp).convert(str(out), force=True)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["media", "kontext", "ctranslate2", "tiny-whisper"])
    parser.add_argument("path", nargs="?", type=Path, help="tiny-whisper: where to write it")
    parser.add_argument("--whisper", type=Path, help="a CTranslate2 Whisper folder")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run of the checks' logic where there is no GPU")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.part == "tiny-whisper":
        tiny_whisper(args.path or ROOT / ".cache" / "gpu" / "whisper")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if args.part == "media":
            media_checks(Path(tmp))
        elif args.part == "kontext":
            from scripts.gpu_kontext import kontext_checks

            kontext_checks(check, DEVICE)
        else:
            ctranslate2_checks(args.whisper or ROOT / ".cache" / "gpu" / "whisper")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_check_{args.part}.json").write_text(json.dumps(RESULTS, indent=2))
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
