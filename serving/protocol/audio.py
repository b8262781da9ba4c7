"""/v1/audio/speech and /v1/audio/transcriptions: OpenAI's shapes, checked against the catalog.

Shared by the router (which rejects bad requests before they reach a worker) and the audio
workers (which speak the same shapes, so each can be called on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config.catalog import SpeechOptions, TranscriptionOptions
from serving.errors import OpenAIError, invalid_request, validation_error
from serving.media.audio import FORMATS, AudioFormat

# The transcription worker tells the router how long the upload was (for the usage ledger)
# without the router decoding it, whatever the response format.
AUDIO_SECONDS_HEADER = "X-Audio-Seconds"

# --- speech ----------------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str | dict[str, str]
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=4096)
    stream_format: Literal["audio", "sse"] = "audio"


@dataclass(frozen=True)
class SpeechParams:
    text: str
    voice: str  # the model's own voice name
    format: AudioFormat
    speed: float
    sse: bool


def resolve_speech_request(req: SpeechRequest, options: SpeechOptions) -> SpeechParams:
    if not req.input.strip():
        raise invalid_request("'input' must not be empty.", param="input", code="invalid_value")
    if not any(ch.isalnum() for ch in req.input):
        raise invalid_request("'input' has nothing to speak: no letters or digits.",
                              param="input", code="invalid_value")
    if len(req.input) > options.max_input_chars:
        raise invalid_request(f"'input' is {len(req.input)} characters; this model takes at "
                              f"most {options.max_input_chars}.", param="input",
                              code="string_above_max_length")
    name = req.voice if isinstance(req.voice, str) else req.voice.get("id", "")
    voice = name if name in options.voices else options.openai_voices.get(name)
    if voice is None:
        valid = [*options.voices, *sorted(options.openai_voices)]
        raise invalid_request(f"Unknown voice '{name}'. Valid voices for this model: "
                              f"{', '.join(valid)}.", param="voice", code="invalid_value")
    assert req.response_format in FORMATS
    return SpeechParams(req.input, voice, req.response_format, req.speed,
                        req.stream_format == "sse")


# --- transcription ---------------------------------------------------------------------------

# OpenAI's list, plus the aac and opus that /v1/audio/speech itself produces.
AUDIO_EXTENSIONS = ("aac", "flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "opus",
                    "wav", "webm")
ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionFields(BaseModel):
    """The form fields besides `file` (multipart sends every value as a string)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    language: str | None = None
    prompt: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    response_format: ResponseFormat = "json"
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=list, alias="timestamp_granularities[]")
    stream: bool = False
    chunking_strategy: Any = None
    include: Any = Field(default=None, alias="include[]")


@dataclass(frozen=True)
class TranscriptionParams:
    language: str | None
    prompt: str | None
    temperature: float
    response_format: ResponseFormat
    words: bool
    segments: bool
    stream: bool


def transcription_fields(form: Any) -> TranscriptionFields:
    """Parse the non-file fields of a multipart form (repeated keys such as
    `timestamp_granularities[]` become lists); a bad one is a 400 naming it."""
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "file":
            continue
        if key.endswith("[]"):
            data.setdefault(key, []).append(value)
        else:
            data[key] = value
    try:
        return TranscriptionFields.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def file_too_large(max_bytes: int, size: int | None = None) -> OpenAIError:
    """An upload over a model's `max_file_bytes` (or, with no size, a body past every
    model's): the one 413 of transcriptions."""
    found = "The file is larger" if size is None else f"The file is {size} bytes, larger"
    return OpenAIError(413, f"{found} than the {max_bytes} bytes allowed.", param="file",
                       code="file_too_large")


def check_audio_file(form: Any, options: TranscriptionOptions) -> Any:
    """The uploaded file: present, of an allowed type by its name, not too big."""
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise invalid_request("Missing required parameter: 'file'.", param="file",
                              code="missing_required_parameter")
    name = upload.filename or ""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension not in AUDIO_EXTENSIONS:
        raise invalid_request(f"Invalid file format. Supported formats: "
                              f"{AUDIO_EXTENSIONS}", param="file", code="invalid_value")
    if upload.size is not None and upload.size > options.max_file_bytes:
        raise file_too_large(options.max_file_bytes, upload.size)
    return upload


def resolve_transcription(fields: TranscriptionFields,
                          options: TranscriptionOptions) -> TranscriptionParams:
    language = fields.language.lower() if fields.language else None
    if language is not None and language not in options.languages:
        raise invalid_request(f"Unsupported language '{fields.language}' for this model; it "
                              f"transcribes: {', '.join(options.languages)}.",
                              param="language", code="unsupported_language")
    granularities = set(fields.timestamp_granularities)
    if granularities and fields.response_format != "verbose_json":
        raise invalid_request("timestamp_granularities[] needs response_format "
                              "'verbose_json'.", param="timestamp_granularities[]",
                              code="invalid_value")
    return TranscriptionParams(
        language=language,
        prompt=fields.prompt,
        temperature=fields.temperature,
        response_format=fields.response_format,
        words="word" in granularities,
        segments="segment" in granularities or not granularities,
        stream=fields.stream,
    )
