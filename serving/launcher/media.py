"""Media workers (images, videos, speech, transcription): `python -m serving.workers KIND`."""

from __future__ import annotations

import sys
from pathlib import Path

from serving.config import Config, Modality, WorkerConfig
from serving.launcher.supervisor import WorkerSpec, worker_env
from serving.workers.spec import MediaWorkerSpec

KIND = {Modality.image: "images", Modality.video: "videos", Modality.speech: "speech",
        Modality.transcription: "transcription"}


def media_worker(name: str, worker: WorkerConfig, config: Config, model_path: Path,
                 replica: int = 0) -> WorkerSpec:
    """Replica `replica` of the worker (0 of 1 unless it has `replicas`), named `name`."""
    entry, args = worker.entry, worker.args
    assert entry is not None and args is not None
    spec = MediaWorkerSpec(name=name, device=config.device, model_path=model_path, entry=entry,
                           args=args)
    # The supervisor adds --port, fresh for each start unless the worker has a fixed one.
    argv = [sys.executable, "-m", "serving.workers", KIND[entry.modality],
            "--spec", spec.model_dump_json()]
    return WorkerSpec(name=name, argv=argv,
                      env=worker_env(worker.env, worker.replica_gpus(replica)), port=worker.port,
                      startup_timeout_s=worker.startup_timeout_s)
