"""The configuration reference (docs/configuration.md), generated from the config models.

Generated rather than written so that it cannot drift from the code: `serving config
reference > docs/configuration.md` rewrites it, and tests/test_config_reference.py fails when
the file and the models differ. One table per section (a pydantic model), one row per key.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from serving.config.catalog import ModelEntry
from serving.config.deployment import Config

REGENERATE = "serving config reference > docs/configuration.md"
HEADER = f"""# Configuration reference

Every key of a deployment config (`configs/*.yaml`) and of a catalog entry
(`models/*.yaml`), generated from the config models. Regenerate it with
`{REGENERATE}`; do not edit it by hand.
"""


def _submodels(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through unions, lists, dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += [m for m in _submodels(arg) if m not in found]
    return found


def _type_name(annotation: object) -> str:
    """A short, stable name for a field's type."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(str(m.value) for m in annotation)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Path | Enum):
        value = str(value.value if isinstance(value, Enum) else value)
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sections(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """Depth-first (path, model) pairs; a model reached twice is listed once, at its first."""
    out = [(path, model)]
    for name, field in model.model_fields.items():
        if field.exclude and name != "args":
            continue  # filled in by the loader (the catalog entry has its own sections)
        key = f"{name}.NAME" if typing.get_origin(field.annotation) is dict else name
        key = "engine_args" if field.exclude else key  # a worker's args come from these
        subs = _submodels(field.annotation)
        for sub in subs:
            label = f"{path}.{key}" if path else key
            if len(subs) > 1:
                label += f" ({sub.__name__})"
            out += _sections(sub, label)
    return out


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of the reference: the deployment config, then a catalog entry."""
    seen: set[type[BaseModel]] = set()
    unique = []
    for path, model in _sections(Config, "") + _sections(ModelEntry, "catalog entry"):
        if model not in seen:
            seen.add(model)
            unique.append((path, model))
    return unique


def missing_descriptions() -> list[str]:
    """`Model.key` for every field that an operator would see without a description."""
    return [f"{m.__name__}.{n}" for _, m in sections()
            for n, f in m.model_fields.items() if not f.description and not f.exclude]


def render() -> str:
    parts = [HEADER]
    for path, model in sections():
        fields = {n: f for n, f in model.model_fields.items() if not f.exclude}
        title = path or "top level"
        parts.append(f"## {title}\n")
        doc = (model.__doc__ or "").strip()
        if doc and model.__module__.startswith("serving"):
            parts.append(_cell(doc) + "\n")
        parts.append("| key | type | default | description |\n|---|---|---|---|")
        for name, field in fields.items():
            parts.append(f"| `{name}` | {_cell(_type_name(field.annotation))} | "
                         f"{_cell(_default(field))} | {_cell(field.description or '')} |")
        parts.append("")
    return "\n".join(parts)
