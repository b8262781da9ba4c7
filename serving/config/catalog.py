"""The model catalog: one YAML file per model under `models/`.

A catalog entry says what a model *is* (where its weights come from, what it can do, how its
engine should run it by default). A deployment config (`configs/*.yaml`) says which entries run
where; swapping a model is editing that file, never code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PUBLIC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Strict(BaseModel):
    """Base for config models: a misspelt key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class Modality(StrEnum):
    chat = "chat"
    image = "image"
    video = "video"
    speech = "speech"
    transcription = "transcription"


Capability = Literal["tool_use", "json_schema", "vision", "prefix_caching"]


class HubSource(Strict):
    """Weights on the Hugging Face hub, downloaded once into the cache on GPU nodes."""

    hub: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = None
    ignore_patterns: list[str] = Field(default_factory=lambda: ["original/*", "*.pth"])


class PathSource(Strict):
    """A model folder already on disk; used in place."""

    path: Path


class PackageSource(Strict):
    """Weights shipped inside an installed Python package (the offline CPU models)."""

    package: str
    file: str | None = Field(
        default=None, description="File inside the package; the package folder itself if unset."
    )
    format: Literal["hf", "gguf"] = "hf"


Source = HubSource | PathSource | PackageSource


class ModelEntry(Strict):
    id: str = Field(pattern=PUBLIC_ID_PATTERN, description="Public id clients send as `model`.")
    aliases: list[str] = Field(default_factory=list)
    modality: Modality
    engine: Literal["vllm"]
    source: Source
    chat_template: str | None = Field(
        default=None,
        description="A template bundled in serving/weights/templates (by name) or a file path; "
        "written into the prepared model so the engine picks it up.",
    )
    capabilities: set[Capability] = Field(default_factory=set)
    owned_by: str = "serving"
    engine_defaults: dict[str, Any] = Field(default_factory=dict)

    def names(self) -> list[str]:
        return [self.id, *self.aliases]
