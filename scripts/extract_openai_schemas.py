"""Extract the response schemas the tests validate against from OpenAI's published spec.

The full spec (87k lines of YAML) is not needed at test time, and may not sit beside a CI
checkout; this keeps the schemas the router's responses must match, with every schema they
reference, in tests/openai_schemas.json (OpenAI's spec is MIT-licensed). Where to get the
spec and when to rerun this: docs/openai-schemas.md.

    python scripts/extract_openai_schemas.py PATH/TO/openapi.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "ImagesResponse",
    "VideoResource",
    "VideoListResource",
    "DeletedVideoResource",
    "Response",
    "ResponseStreamEvent",
]
OUT = Path(__file__).resolve().parent.parent / "tests" / "openai_schemas.json"


def refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    args = parser.parse_args()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(args.spec.read_text(), Loader=loader)
    schemas = spec["components"]["schemas"]
    keep: dict[str, object] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        found: set[str] = set()
        refs(schemas[name], found)
        todo += sorted(found - keep.keys())
    out = {
        "source": f"OpenAI OpenAPI spec {spec['info']['version']} (MIT license)",
        "components": {"schemas": dict(sorted(keep.items()))},
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(keep)} schemas to {OUT}")


if __name__ == "__main__":
    main()
