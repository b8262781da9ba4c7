"""Put each model's weights where its engine can load them, once.

Idempotent and safe to interrupt: anything built here is written to a temporary folder and
renamed into place, so a folder under the cache either is complete or does not exist. Hub
downloads go through huggingface_hub's own cache, which resumes and is atomic per file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from serving.config import Config, ModelEntry
from serving.config.catalog import (
    AssembleSource,
    HubSource,
    PackageSource,
    PathSource,
    TinySource,
)

log = logging.getLogger("serving.weights")

TEMPLATES_DIR = Path(__file__).parent / "templates"


class PrepareError(Exception):
    """A model's weights could not be made ready; the message says which and why."""


def package_path(source: PackageSource) -> Path:
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"package '{source.package}' is not installed (run `make install`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / source.file if source.file else folder
    if not path.exists():
        raise PrepareError(f"package '{source.package}' has no file '{source.file}'")
    return path


def _packages(source: object) -> list[str]:
    if isinstance(source, PackageSource):
        return [source.package]
    if isinstance(source, AssembleSource):
        return sorted({p.split(":", 1)[0] for parts in source.assemble.values() for p in parts})
    return []


def _digest(entry: ModelEntry) -> str:
    """Changes whenever the source or a package version does, so stale builds are redone."""
    # An unset `vision` is left out, so adding the field kept the folders already built.
    unset = {"vision"} if getattr(entry.source, "vision", "") is None else None
    key = entry.source.model_dump_json(exclude=unset)
    if getattr(entry.source, "vision", None) is not None:
        from serving.weights.tiny_vlm import BUILD_VERSION

        key += f"tiny_vlm {BUILD_VERSION}"
    for package in _packages(entry.source):
        try:
            key += importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            key += "unversioned"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _assemble(source: AssembleSource):
    parts = {name: [_package_file(p) for p in paths]
             for name, paths in source.assemble.items()}  # fail before writing anything

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for name, files in parts.items():
            with (tmp / name).open("wb") as out:
                for part in files:
                    with part.open("rb") as f:
                        shutil.copyfileobj(f, out, 16 * 1024 * 1024)

    return build


def _package_file(spec: str) -> Path:
    package, _, file = spec.partition(":")
    return package_path(PackageSource(package=package, file=file))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_atomically(final: Path, build) -> Path:
    """Run `build(tmp)` and rename `tmp` to `final`; leftovers of dead builders are removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # anything but "someone else finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _in_child(what: str, module: str, *args: str):
    """A build step run as `python -m module *args TMP_DIR`, so the torch and transformers it
    loads live in a short-lived child rather than in the launcher."""

    def build(tmp: Path) -> None:
        cmd = [sys.executable, "-m", module, *args, str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise PrepareError(f"{what} failed:\n{tail}")

    return build


def prepare_model(entry: ModelEntry, cache_dir: Path, dtype: str = "auto") -> Path:
    """Return the folder (or hub snapshot) the engine should load for `entry`."""
    source = entry.source
    if isinstance(source, PathSource):
        path = source.path.expanduser()
        if not path.exists():
            raise PrepareError(f"{entry.id}: source path {path} does not exist")
        return path.resolve()
    if isinstance(source, HubSource):
        return _download(entry, source, cache_dir)
    final = cache_dir / "models" / f"{entry.id}--{_digest(entry)}"
    if isinstance(source, AssembleSource):
        build = _assemble(source)
    elif isinstance(source, TinySource):
        build = _in_child(f"building tiny {source.tiny} pipeline", "serving.weights.tiny",
                          source.tiny, "--seed", str(source.seed))
    elif source.vision is not None:
        if final.is_dir():
            return final
        # The text model first, in its own folder: the one the entry without vision has.
        text = entry.model_copy(update={"source": source.model_copy(update={"vision": None})})
        text_dir = prepare_model(text, cache_dir, dtype)
        build = _in_child("adding a tiny vision encoder", "serving.weights.tiny_vlm",
                          str(text_dir))
    else:
        path = package_path(source)
        if source.format == "ready":
            return path
        dtype_args = ["--dtype", dtype] if dtype in ("bfloat16", "float16", "float32") else []
        build = _in_child(f"converting {path.name}", "serving.weights.gguf", str(path),
                          *dtype_args)
    if final.is_dir():
        return final
    log.info("preparing %s into %s (once)", entry.id, final)
    return _build_atomically(final, build)


def _download(entry: ModelEntry, source: HubSource, cache_dir: Path) -> Path:
    """The hub snapshot, downloaded once; logs and records the commit it is."""
    from huggingface_hub import get_token, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    page = f"https://huggingface.co/{source.hub}"
    if source.gated and not get_token():
        raise PrepareError(
            f"{entry.id}: {source.hub} is gated and no Hugging Face token is set: accept its "
            f"licence at {page} while logged in, then set HF_TOKEN to a token of that account")
    try:
        path = Path(snapshot_download(source.hub, revision=source.revision,
                                      cache_dir=cache_dir / "hub",
                                      ignore_patterns=source.ignore_patterns))
    except GatedRepoError:
        raise PrepareError(
            f"{entry.id}: {source.hub} is gated and the token in HF_TOKEN may not download it: "
            f"accept its licence at {page} with the token's account") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise PrepareError(f"{entry.id}: downloading {source.hub} failed: {e}") from None
    record_revision(cache_dir, entry, source, commit=path.name)
    return path


REVISIONS_FILE = "revisions.json"


def record_revision(cache_dir: Path, entry: ModelEntry, source: HubSource, commit: str) -> None:
    """Note the commit a hub source resolved to (the snapshot folder the hub client named after
    it), in the log and in cache_dir/revisions.json, so an operator can pin `revision` to it."""
    import json

    requested = source.revision or "main"
    pin = "" if requested == commit else f"; pin it with `revision: {commit}` in its catalog entry"
    log.info("%s: %s at revision %s is commit %s%s", entry.id, source.hub, requested, commit, pin)
    record = cache_dir / REVISIONS_FILE
    known = json.loads(record.read_text()) if record.exists() else {}
    entry_record = {"hub": source.hub, "revision": requested, "commit": commit}
    if known.get(entry.id) != entry_record:
        known[entry.id] = entry_record
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
        tmp.replace(record)


def chat_template_path(entry: ModelEntry) -> Path | None:
    """A bundled template by name, or a file path; None to use the model's own."""
    if entry.chat_template is None:
        return None
    bundled = TEMPLATES_DIR / f"{entry.chat_template}.jinja"
    path = bundled if bundled.is_file() else Path(entry.chat_template).expanduser()
    if not path.is_file():
        raise PrepareError(f"{entry.id}: chat template '{entry.chat_template}' not found")
    return path


def prepare_all(config: Config) -> dict[str, Path]:
    """Prepare every worker's model; returns worker name -> folder to load."""
    out = {}
    for name, worker in config.workers.items():
        assert worker.entry is not None and worker.args is not None
        chat_template_path(worker.entry)  # fail now, not when the worker starts
        dtype = getattr(worker.args, "dtype", "auto")  # GGUF conversion's target dtype
        out[name] = prepare_model(worker.entry, config.cache_dir, dtype)
    return out
