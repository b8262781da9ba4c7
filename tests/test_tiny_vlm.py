"""The CPU default's vision model: SmolLM2's text weights under a tiny random Idefics3 vision
half (serving.weights.tiny_vlm), checked on the prepared folder the stack serves (prepared
here if it is not yet)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from serving.config import load_config
from serving.config.hardware import resolve_dtype
from serving.weights.prepare import prepare_model
from serving.weights.tiny_vlm import IMAGE_SIZE, IMAGE_TOKENS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folders() -> tuple[Path, Path]:
    """(the tiny VLM, the text model it was built from), as `serving up` prepares them."""
    cfg = load_config([ROOT / "configs" / "cpu.yaml"])
    entry = cfg.workers["chat"].entry
    dtype = resolve_dtype(cfg.workers["chat"].args.dtype, cfg.device)
    text = entry.model_copy(update={"source": entry.source.model_copy(update={"vision": None})})
    return (prepare_model(entry, cfg.cache_dir.expanduser(), dtype),
            prepare_model(text, cfg.cache_dir.expanduser(), dtype))


def test_the_text_half_is_smollm2_unchanged(folders: tuple[Path, Path]):
    from transformers import AutoTokenizer

    vlm, text = folders
    with safe_open(vlm / "model.safetensors", "pt") as v, \
            safe_open(text / "model.safetensors", "pt") as t:
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.up_proj.weight",
                     "model.norm.weight"):
            assert v.get_tensor(name.replace("model.", "model.text_model.", 1)).equal(
                t.get_tensor(name))
        embeddings = t.get_tensor("model.embed_tokens.weight")
        grown = v.get_tensor("model.text_model.embed_tokens.weight")
        assert grown[: len(embeddings)].equal(embeddings) and len(grown) > len(embeddings)
    # Every row the model can sample is a token: none added as padding.
    tokenizer = AutoTokenizer.from_pretrained(vlm)
    assert len(grown) == len(tokenizer) == len(embeddings) + 4
    prompt = "What is the capital of France? <tool_call> 3.14"
    assert tokenizer(prompt).input_ids == \
        AutoTokenizer.from_pretrained(text)(prompt).input_ids


def test_an_image_becomes_its_tokens(folders: tuple[Path, Path]):
    from transformers import AutoConfig, AutoProcessor

    vlm, _ = folders
    config = AutoConfig.from_pretrained(vlm)
    assert config.architectures == ["Idefics3ForConditionalGeneration"]
    processor = AutoProcessor.from_pretrained(vlm)
    for size in [(300, 200), (20, 30)]:  # every picture is one tile, whatever its size
        inputs = processor(text=["<image>What is this?"], images=[[Image.new("RGB", size)]])
        assert inputs["input_ids"][0].count(config.image_token_id) == IMAGE_TOKENS == 16
        assert inputs["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
