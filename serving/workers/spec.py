"""What the launcher tells a media worker process: its model and engine args, as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from serving.config import ModelEntry
from serving.config.engines import DiffusersArgs


class MediaWorkerSpec(BaseModel):
    name: str
    device: Literal["cpu", "cuda"]
    model_path: Path
    entry: ModelEntry
    args: DiffusersArgs

    def serves(self, model: str | None) -> bool:
        """A request names this worker's model, or none (the worker has only one)."""
        return model is None or model in self.entry.names()
