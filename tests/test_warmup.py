"""Warm-up: each media worker runs one real inference before /health is 200, and a worker whose
first inference fails never becomes ready (the launcher reports why)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.config import load_config
from serving.launcher.media import media_worker
from serving.launcher.supervisor import Supervisor, WorkerFailed
from serving.weights.prepare import prepare_model
from serving.workers.spec import MediaWorkerSpec

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test"
KINDS = {"images": "images", "edits": "images", "videos": "videos", "speech": "speech",
         "transcription": "transcription"}


def cpu_worker(name: str):
    worker = load_config([ROOT / "configs" / "cpu.yaml"]).workers[name]
    assert worker.entry is not None
    return worker, prepare_model(worker.entry, CACHE)


@pytest.mark.parametrize("name", list(KINDS))
def test_health_answers_after_one_real_inference(name: str, caplog: pytest.LogCaptureFixture):
    import importlib

    worker, path = cpu_worker(name)
    spec = MediaWorkerSpec(name=name, device="cpu", model_path=path, entry=worker.entry,
                           args=worker.args)
    app = importlib.import_module(f"serving.workers.{KINDS[name]}.server").create_app(spec)
    with caplog.at_level(logging.INFO, logger="serving.workers"), TestClient(app) as client:
        warmed = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
        assert len(warmed) == 1, warmed
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("name", ["images", "edits"])
def test_a_compiled_image_worker_warms_every_size_and_batch(name: str,
                                                           caplog: pytest.LogCaptureFixture):
    """With `compile` (a graph per shape), warm-up runs one real pipeline call per catalog size
    and batch of 1 to the most images a call can hold, so no request meets a new shape. The
    shapes are checked on the eager tiny pipeline: compiling is a GPU worker's business."""
    from serving.workers.diffusion import load_pipeline
    from serving.workers.images.engine import ImageEngine
    from serving.workers.warmup import warm_up_images

    worker, path = cpu_worker(name)
    spec = MediaWorkerSpec(name=name, device="cpu", model_path=path, entry=worker.entry,
                           args=worker.args)
    engine = ImageEngine(load_pipeline(spec), spec.args.max_sequence_length)
    calls: list[int] = []
    generate = engine.generate
    engine.generate = lambda jobs: (calls.append(len(jobs)), generate(jobs))[1]
    with caplog.at_level(logging.INFO, logger="serving.workers"):
        warm_up_images(name, engine, worker.entry, 3)
    sizes = worker.entry.image.sizes
    warmed = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert calls == [1, 2, 3] * len(sizes)
    assert [m.split(": ")[-1].split(" image")[0].split()[-1] for m in warmed] == [
        size for size in sizes for _ in range(3)]


def test_a_worker_whose_first_inference_fails_is_never_ready(tmp_path: Path):
    # Loads fine; FLUX refuses more than 512 T5 tokens only when it is called.
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("workers: {images: {engine_args: {max_sequence_length: 1024}}}\n")
    config = load_config([ROOT / "configs" / "cpu.yaml", overlay])
    worker = config.workers["images"]
    assert worker.entry is not None
    spec = media_worker("images", worker, config, prepare_model(worker.entry, CACHE))
    supervisor = Supervisor(spec, startup_attempts=1)
    assert spec.argv[0] == sys.executable

    async def start() -> None:
        try:
            await supervisor.start()
        finally:
            await supervisor.stop()

    with pytest.raises(WorkerFailed, match="cannot be greater than 512"):
        asyncio.run(start())
    assert supervisor.state == "stopped"
