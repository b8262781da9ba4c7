"""What the launcher tells a media worker process: its model and engine args, as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, model_validator

from serving.config import ModelEntry
from serving.config.engines import ENGINE_ARGS


class MediaWorkerSpec(BaseModel):
    name: str
    device: Literal["cpu", "cuda"]
    model_path: Path
    entry: ModelEntry
    args: Any

    @model_validator(mode="after")
    def _typed_args(self):
        """The engine's own args model (DiffusersArgs, WhisperArgs, TtsArgs)."""
        self.args = ENGINE_ARGS[self.entry.engine].model_validate(
            self.args if isinstance(self.args, dict) else self.args.model_dump())
        return self

    def serves(self, model: str | None) -> bool:
        """A request names this worker's model, or none (the worker has only one)."""
        return model is None or model in self.entry.names()
