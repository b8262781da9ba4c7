"""Typed configuration: the model catalog (`models/`) and deployments (`configs/`)."""

from serving.config.catalog import Capability, Modality, ModelEntry
from serving.config.deployment import ApiKey, Config, Limits, RouterConfig, WorkerConfig
from serving.config.engines import VllmArgs
from serving.config.loader import ConfigError, load_catalog, load_config

__all__ = [
    "ApiKey",
    "Capability",
    "Config",
    "ConfigError",
    "Limits",
    "Modality",
    "ModelEntry",
    "RouterConfig",
    "VllmArgs",
    "WorkerConfig",
    "load_catalog",
    "load_config",
]
