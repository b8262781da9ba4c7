"""Tiny random-weight diffusers pipelines, built locally for tests and CPU demos.

This machine has no model hub (and a real FLUX.1 or Wan2.1 is tens of gigabytes), so tests
cannot download a pipeline. Instead we build one the way diffusers' own unit tests do: every
component is constructed from a small config with random weights (seeded), tokenizers included,
and the whole pipeline is written with `save_pretrained`. The result loads back with
`FluxPipeline.from_pretrained(dir)` / `WanPipeline.from_pretrained(dir)` offline, exercises the
real pipeline code end to end (text encoding, denoising loop, VAE decode, callbacks, batching)
and produces noise-like images and videos of the requested size in well under a second.

Sizes follow the real models' geometry where it matters to callers: Flux latents have 16
channels and the VAE downsamples 8x (so width/height must be multiples of 16); Wan's VAE has
`z_dim` 16, downsamples 8x in space and 4x in time (num_frames = 4k + 1, sizes multiples of 16).

Building is deterministic: the same seed gives byte-identical safetensors files.

CLI (the project runs builds in a short-lived child process):
    python -m serving.weights.tiny flux OUT_DIR [--seed N]
    python -m serving.weights.tiny flux-kontext OUT_DIR [--seed N]
    python -m serving.weights.tiny wan OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5Tokenizer

# Common English words (and words typical of image/video prompts). They give both tokenizers
# whole-word tokens for ordinary prompts; anything else falls back to characters (CLIP: bytes).
_WORDS = [
    "a", "about", "above", "across", "after", "again", "against", "air", "all", "almost",
    "alone", "along", "also", "always", "am", "an", "and", "angle", "animal", "another", "any",
    "apple", "are", "area", "arm", "around", "art", "artist", "as", "at", "autumn", "away",
    "baby", "back", "background", "bag", "ball", "beach", "beautiful", "bed", "before",
    "behind", "bench", "between", "big", "bird", "black", "blue", "blur", "boat", "body",
    "book", "bottle", "box", "boy", "bread", "bridge", "bright", "brown", "building", "bus",
    "but", "by", "cake", "camera", "can", "car", "castle", "cat", "chair", "child",
    "cinematic", "city", "clean", "clear", "close", "cloud", "coat", "coffee", "cold", "color",
    "colorful", "come", "cow", "cup", "cute", "dark", "day", "deep", "desert", "detailed",
    "dog", "door", "down", "dragon", "dress", "drink", "during", "each", "earth", "eat",
    "evening", "every", "eye", "face", "fall", "far", "field", "fire", "fish", "five", "floor",
    "flower", "fly", "flying", "food", "for", "forest", "four", "fox", "from", "front",
    "fruit", "full", "garden", "girl", "glass", "go", "gold", "good", "grass", "gray", "great",
    "green", "hair", "hand", "happy", "hat", "have", "he", "head", "her", "high", "hill",
    "his", "holding", "home", "horse", "hot", "house", "how", "i", "ice", "in", "indoor",
    "inside", "into", "is", "it", "its", "jump", "jumping", "kitchen", "lake", "landscape",
    "large", "last", "late", "leaf", "left", "light", "like", "lion", "little", "long", "look",
    "low", "man", "many", "market", "me", "moon", "more", "morning", "mountain", "mouth",
    "move", "moving", "much", "my", "near", "neon", "new", "next", "night", "no", "not", "of",
    "off", "old", "on", "one", "only", "open", "orange", "other", "our", "out", "outdoor",
    "over", "painting", "paper", "park", "people", "person", "photo", "photograph", "picture",
    "pink", "place", "plant", "play", "portrait", "purple", "quality", "rain", "realistic",
    "red", "right", "river", "road", "rock", "room", "round", "run", "running", "sand",
    "scene", "sea", "shadow", "she", "ship", "shot", "side", "sign", "silver", "simple", "sit",
    "sitting", "sky", "slow", "small", "smile", "snow", "soft", "some", "space", "sport",
    "spring", "standing", "star", "stone", "street", "style", "summer", "sun", "sunlight",
    "sunset", "sweet", "table", "tall", "tea", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "three", "through", "time", "to", "top", "tower", "town", "tree",
    "two", "under", "up", "very", "video", "view", "walk", "walking", "wall", "warm", "water",
    "wave", "we", "were", "white", "wide", "wind", "window", "winter", "with", "without",
    "woman", "wood", "world", "yellow", "you", "young", "zoom",
]

# Frequent English word endings, as Unigram pieces inside a word.
_SUFFIXES = ["s", "es", "ed", "ing", "er", "est", "ly", "tion", "ness", "ful", "less", "'s", "n't"]

CLIP_MAX_LENGTH = 77


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (what `ByteLevel` pre-tokenizing uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _learn_bpe(words: Sequence[str]) -> list[tuple[str, str]]:
    """Learn BPE merges (CLIP style, "</w>" ends a word) until every word is one token.

    Plain BPE training on a tiny corpus: merge the most frequent adjacent pair (ties broken
    alphabetically, so the result is deterministic). Merges learned this way reproduce each
    training word as a single token when applied in rank order, which hand-written
    left-to-right merges do not (an earlier "h e</w>" would split "the" into "t" + "he</w>").
    """
    corpus = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words) if w]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        joined = best[0] + best[1]
        for symbols in corpus:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i:i + 2] = [joined]
                i += 1
        corpus = [symbols for symbols in corpus if len(symbols) > 1]


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style byte-level BPE: every byte (alone and word-final), merges for `_WORDS`.

    Every byte has a token, so any text (any Unicode) tokenizes; common words are one token.
    The layout follows CLIP's: bytes, bytes + "</w>", merged tokens, then the two specials.
    """
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*byte_chars, *(c + "</w>" for c in byte_chars)]:
        vocab.setdefault(token, len(vocab))
    merges = _learn_bpe(_WORDS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, [f"{left} {right}" for left, right in merges]


def build_clip_tokenizer() -> CLIPTokenizer:
    """CLIP BPE tokenizer from a small vocab.json/merges.txt written here (model_max_length 77)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        # Without model_max_length=77 CLIP's pipelines overflow (padding to "max_length" of 1e30).
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)
    for key in ("is_local", "local_files_only"):  # loading details, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def _t5_vocab() -> list[tuple[str, float]]:
    """A Unigram (SentencePiece-style) vocabulary: specials, whole words, then characters.

    Pieces starting with "▁" begin a word. Single characters (printable ASCII and Latin-1, each
    with and without "▁") let any such text segment; anything else becomes <unk>.
    """
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {piece for piece, _ in vocab}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for rank, word in enumerate(_WORDS):
        add("▁" + word, -5.0 - rank / len(_WORDS))
    for suffix in _SUFFIXES:
        add(suffix, -7.0)
    chars = [chr(c) for c in [*range(0x21, 0x7F), *range(0xA1, 0x100)]]
    for char in chars:
        add("▁" + char, -9.0)
    for char in chars:
        add(char, -10.0)
    return vocab


def build_t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """T5/UMT5 fast tokenizer (a `tokenizers` Unigram model) with <pad>=0, </s>=1, <unk>=2.

    Only what transformers' own `T5Tokenizer.__init__` builds survives a save/reload (it rebuilds
    the backend from the saved vocabulary), so no custom normalizer or byte fallback is added.
    """
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=_t5_vocab(), extra_ids=0, model_max_length=model_max_length)


# --------------------------------------------------------------------------- pipelines


def _save(pipe, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def _t5_config(tokenizer: Any, d_model: int) -> dict[str, Any]:
    """A two-layer (U)T5 encoder config; FLUX uses T5, Wan its multilingual UMT5 sibling."""
    return {
        "vocab_size": len(tokenizer), "d_model": d_model, "d_kv": 8, "d_ff": 37,
        "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }


FLUX_LATENT_CHANNELS = 16  # as FLUX.1; the transformer sees 2x2 patches of latents


def build_tiny_flux(out_dir: Path, seed: int = 0) -> None:
    """Build a tiny random `FluxPipeline` (a few MB) and `save_pretrained` it into `out_dir`."""
    from diffusers import FluxPipeline

    _save(FluxPipeline(**flux_components(seed)), out_dir)


def build_tiny_flux_kontext(out_dir: Path, seed: int = 0) -> None:
    """Build a tiny random `FluxKontextPipeline` (image editing) into `out_dir`.

    The same components as the tiny FLUX, with a guidance embedding as FLUX.1-Kontext-dev has
    (guidance-distilled); the pipeline encodes the input image with the VAE and appends its
    latent tokens to the ones being denoised, so the input really shapes the output.
    """
    from diffusers import FluxKontextPipeline

    components = flux_components(seed, guidance_embeds=True)
    _save(FluxKontextPipeline(**components, image_encoder=None, feature_extractor=None), out_dir)


def flux_components(seed: int = 0, guidance_embeds: bool = False) -> dict[str, Any]:
    """The parts of a tiny random FLUX.1 pipeline, by the names FLUX's pipelines take them:
    FLUX's text-to-image pipeline and its image-conditioned siblings share them.

    `guidance_embeds` gives the transformer FLUX.1-dev's distilled-guidance embedding (Kontext
    has one; schnell does not)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_dim, t5_dim = 32, 32
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer(model_max_length=512)

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=clip_dim,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        projection_dim=clip_dim,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))

    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(**_t5_config(tokenizer_2, t5_dim)))

    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler config
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {"scheduler": scheduler, "vae": _flux_vae(seed),
            "transformer": _flux_transformer(seed, clip_dim, t5_dim, guidance_embeds),
            "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2}


def _flux_transformer(seed: int, clip_dim: int, t5_dim: int, guidance_embeds: bool) -> Any:
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * FLUX_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_dim,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )


def _flux_vae(seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # 4 blocks -> 8x downsampling, like FLUX.1
        layers_per_block=1,
        latent_channels=FLUX_LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=128,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def build_tiny_wan(out_dir: Path, seed: int = 0) -> None:
    """Build a tiny random text-to-video `WanPipeline` and `save_pretrained` it into `out_dir`."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    text_dim = 32
    tokenizer = build_t5_tokenizer(model_max_length=512)

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3,  # the decoder dominates Wan's CPU time; 3 channels as in diffusers' tests
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # 4x in time, 8x in space
    )

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(**_t5_config(tokenizer, text_dim)))

    scheduler = UniPCMultistepScheduler(  # Wan2.1-T2V's scheduler config
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    )

    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    _save(pipe, out_dir)


BUILDERS = {"flux": build_tiny_flux, "flux-kontext": build_tiny_flux_kontext,
            "wan": build_tiny_wan}


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m serving.weights.tiny {flux,flux-kontext,wan} OUT_DIR [--seed N]`."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.weights.tiny",
        description="Build a tiny random-weight diffusers pipeline (no downloads).",
    )
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    BUILDERS[args.kind](args.out_dir, seed=args.seed)


if __name__ == "__main__":
    main()
