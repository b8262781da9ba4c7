"""Load, deep-merge and validate config files, failing with the file, key and problem."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from serving.config.catalog import ModelEntry
from serving.config.deployment import Config
from serving.config.engines import ENGINE_ARGS, VllmArgs
from serving.config.keys import duplicate_key_name
from serving.errors import param_path

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A config problem, already worded for the operator: `file: key: problem`."""


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping, got {type(data).__name__}")
    return data


def deep_merge(
    base: dict[str, Any],
    overlay: Mapping[str, Any],
    provenance: dict[KeyPath, Path] | None = None,
    source: Path | None = None,
    prefix: KeyPath = (),
) -> dict[str, Any]:
    """Merge `overlay` into `base` in place: mappings merge key by key, anything else replaces.

    `provenance` records which file set each key, so a validation error can name the file.
    """
    for key, value in overlay.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value, provenance, source, path)
        else:
            base[key] = copy.deepcopy(value)
        if provenance is not None and source is not None:
            provenance[path] = source
    return base


def _validation_message(
    err: ValidationError, where: dict[KeyPath, Path] | Path, prefix: KeyPath = ()
) -> str:
    lines = []
    for e in err.errors():
        loc = (*prefix, *e["loc"])
        if isinstance(where, Path):
            file = where
        else:
            # The deepest key some file set: that file is where the problem is.
            file = next(
                (where[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in where),
                next(iter(where.values()), Path("<config>")),
            )
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{file}: {param_path(loc) or '(top level)'}: {msg}")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, where: dict[KeyPath, Path] | Path,
             prefix: KeyPath = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_validation_message(e, where, prefix)) from None


def load_catalog(directory: Path) -> dict[str, ModelEntry]:
    """Every `*.yaml` entry in `directory`, keyed by public id and by each alias."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: catalog folder does not exist")
    by_name: dict[str, ModelEntry] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        entry: ModelEntry = validate(ModelEntry, read_yaml(path), path)
        for name in entry.names():
            if name in by_name:
                raise ConfigError(f"{path}: id: '{name}' is already defined in {origin[name]}")
            by_name[name], origin[name] = entry, path
    return by_name


def per_process_store(config: Config) -> str | None:
    """Why `router.processes` > 1 cannot work with this config's stores, or None. The router
    processes must share rate limits, the ledger and video jobs, or each would count and keep
    its own. A SQLite file is shared by the processes of one node (WAL: one writer at a time,
    readers never blocked); routers on several nodes need PostgreSQL, which this cannot see."""
    router = config.router
    if router.processes == 1:
        return None
    problems = []
    if router.rate_limit_store == "memory":
        problems.append("router.rate_limit_store is `memory` (each process would count "
                        "alone): use a redis:// URL")
    if router.database is not None and ":memory:" in router.database:
        problems.append("router.database is an in-memory SQLite database (one per process): "
                        "use a file, or a postgresql:// URL")
    return (f"router.processes: {router.processes} processes need shared stores, but "
            + "; ".join(problems)) if problems else None


def load_config(paths: list[Path]) -> Config:
    """Deep-merge the files in order, validate, and resolve each worker's catalog entry."""
    if not paths:
        raise ConfigError("no config file given (use -c configs/cpu.yaml)")
    merged: dict[str, Any] = {}
    provenance: dict[KeyPath, Path] = {}
    for path in paths:
        deep_merge(merged, read_yaml(path), provenance, path)
    config: Config = validate(Config, merged, provenance)
    keys_file = provenance.get(("router", "api_keys"), paths[-1])
    if problem := duplicate_key_name(config.router.api_keys, keys_file):
        raise ConfigError(problem)

    catalog_file = provenance.get(("catalog_dir",), paths[0])
    config.catalog_dir = (catalog_file.parent / config.catalog_dir.expanduser()).resolve()
    env_cache = os.environ.get("SERVING_CACHE_DIR")
    config.cache_dir = Path(env_cache or config.cache_dir).expanduser().resolve()
    env_state = os.environ.get("SERVING_STATE_DIR")
    config.state_dir = Path(env_state or config.state_dir).expanduser().resolve()
    config.router.generated_key_file = config.router.generated_key_file.expanduser()
    config.workers = {name: w for name, w in config.workers.items() if w.enabled}
    if not config.workers:
        raise ConfigError(f"{paths[-1]}: workers: every worker is disabled")

    if problem := per_process_store(config):
        raise ConfigError(f"{provenance.get(('router', 'processes'), paths[-1])}: {problem}")

    catalog = load_catalog(config.catalog_dir)
    served: dict[str, str] = {}
    for name, worker in config.workers.items():
        where = provenance.get(("workers", name, "model"), paths[-1])
        entry = catalog.get(worker.model)
        if entry is None:
            known = ", ".join(sorted({e.id for e in catalog.values()}))
            raise ConfigError(
                f"{where}: workers.{name}.model: unknown model '{worker.model}' "
                f"(catalog {config.catalog_dir} has: {known})"
            )
        if entry.id in served:
            raise ConfigError(
                f"{where}: workers.{name}.model: '{entry.id}' is already served by worker "
                f"'{served[entry.id]}'"
            )
        served[entry.id] = name
        engine_args = deep_merge(deep_merge({}, entry.engine_defaults), worker.engine_args)
        worker.entry = entry
        worker.args = validate(
            ENGINE_ARGS[entry.engine], engine_args, provenance, ("workers", name, "engine_args")
        )
        if (isinstance(worker.args, VllmArgs) and "tool_use" in entry.capabilities
                and not worker.args.tool_call_parser):
            raise ConfigError(
                f"{where}: workers.{name}.engine_args.tool_call_parser: model '{entry.id}' has "
                "the tool_use capability, so vLLM needs a tool parser (e.g. hermes)"
            )
    return config
