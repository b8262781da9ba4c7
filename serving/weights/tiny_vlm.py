"""A tiny Idefics3-shaped vision-language model, built locally from SmolLM2's real text weights.

No small VLM ships on PyPI and this machine has no model hub, yet the CPU default and the tests
need a model that vLLM serves on its real multimodal path (its Idefics3 image processor, prompt
expansion into image tokens, vision encoder, connector, embedding merge). So we build one:

- the text half is the prepared SmolLM2-135M-Instruct folder, weights copied unchanged (its
  answers to text prompts are SmolLM2's; image embeddings come from random layers, so it
  describes pictures badly, but every image costs real, counted image tokens);
- the vision half is a small random SigLIP-style encoder (Idefics3's vision transformer) and
  Idefics3's pixel-shuffle connector, seeded, so the same seed gives the same bytes;
- the tokenizer is SmolLM2's plus Idefics3's image tokens; the processor resizes every image to
  one square tile of `IMAGE_SIZE` pixels without splitting: `IMAGE_TOKENS` tokens an image.

Catalog: `source: {package: ..., format: gguf, vision: tiny-idefics3}`. CLI (run in a
short-lived child by `serving.weights.prepare`):
    python -m serving.weights.tiny_vlm TEXT_MODEL_DIR OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

IMAGE_SIZE = 64  # pixels on a side of the one tile each image is resized to
PATCH_SIZE = 8  # SigLIP patch: (64 / 8)^2 = 64 patches
SCALE_FACTOR = 2  # the connector's pixel shuffle merges 2x2 patches: 16 tokens...
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # ...per image, plus markers

# Part of the prepared folder's name: a change to what is built here must change it.
BUILD_VERSION = 2

# Idefics3's special tokens. The processor adds the first three itself; <global-img> is added
# here so the marker vLLM puts before each image's tokens is one token, not text.
IMAGE_SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>",
                        "<global-img>"]


def build_tiny_vlm(text_dir: Path, out_dir: Path, seed: int = 0) -> None:
    """Write an `Idefics3ForConditionalGeneration` folder (model, tokenizer, processor)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_SPECIAL_TOKENS})
    text_config = AutoConfig.from_pretrained(text_dir)
    text_config.tie_word_embeddings = True
    config = Idefics3Config(
        text_config=text_config.to_dict(),
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.text_config.tie_word_embeddings = True

    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32)
    text = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    missing, unexpected = model.model.text_model.load_state_dict(
        text.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"text weights do not fit: missing {missing}, extra {unexpected}")
    # The added image tokens get rows of their own (random, seeded); the text rows are SmolLM2's.
    # Not padded: every row the model can sample must be a token the tokenizer can decode.
    model.resize_token_embeddings(len(tokenizer))
    model.tie_weights()
    model.config.name_or_path = "tiny-idefics3-smollm2"
    # In the text model's dtype (chosen when it was converted for this CPU or GPU).
    model.to(getattr(torch, str(text_config.dtype).removeprefix("torch.")))
    model.save_pretrained(out_dir)

    image_processor = Idefics3ImageProcessor(
        do_resize=True,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=IMAGE_TOKENS)
    for key in ("is_local", "local_files_only"):  # loading details, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    generation = text_dir / "generation_config.json"
    if generation.exists():
        (out_dir / "generation_config.json").write_bytes(generation.read_bytes())


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m serving.weights.tiny_vlm TEXT_MODEL_DIR OUT_DIR [--seed N]`."""
    parser = argparse.ArgumentParser(prog="python -m serving.weights.tiny_vlm",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("text_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_vlm(args.text_dir, args.out_dir, seed=args.seed)


if __name__ == "__main__":
    main()
