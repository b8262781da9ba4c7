"""Request shape for POST /v1/responses: the supported subset of OpenAI's CreateResponse.

Like chat (`chat.py`), the model rejects unknown fields and what this API does not support,
naming the field, before anything reaches vLLM, which serves the endpoint itself. Responses are
not stored: `store: true`, `previous_response_id` and the other server-side state (background
runs, conversations, stored prompts) are a 400; the client sends the conversation in `input`,
as the Agents SDK does by default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from serving.protocol.chat import FUNCTION_NAME, INT64_MAX, _Strict, _unsupported

_NOT_STORED = ("this API does not store responses; send the whole conversation in `input` "
              "(with `store` false or absent).")


def _not_stored(what: str):
    def check(value: Any) -> Any:
        if value is not None and value is not False:
            raise ValueError(f"{what} is not supported: {_NOT_STORED}")
        return value

    return AfterValidator(check)


def _no_includes(value: list[str] | None) -> list[str] | None:
    if value:
        raise ValueError("no `include` values are supported by this API (logprobs, "
                         "encrypted reasoning and tool outputs are not available).")
    return value


# --- input items ----------------------------------------------------------------------------

class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None
    file_id: Annotated[str | None, _unsupported("`file_id` (uploaded files)")] = None


class OutputText(_Strict):
    """An earlier answer's text, sent back as part of the conversation."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


def _type_of(model: type[_Strict]) -> str:
    """The value of a model's `type: Literal[...]` field (which may also allow None)."""
    annotation = model.model_fields["type"].annotation
    literal = next(a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal)
    return get_args(literal)[0]


def _by_type(*models: type[_Strict], default: str | None = None) -> Any:
    """A union of `models` picked by the `type` field (`default` when there is none). The
    members are tagged with their class names, which error locations leave out, so `param`
    names the field as the client wrote it (`input[0].content[1].text`)."""
    names = {_type_of(m): m.__name__ for m in models}
    allowed = ", ".join(f"'{t}'" for t in names)

    def kind(value: Any) -> str | None:
        found = value.get("type", default) if isinstance(value, dict) else getattr(
            value, "type", None)
        return names.get(found) if isinstance(found, str) else None  # `[]` is a 400 too

    return Annotated[
        Union[tuple(Annotated[m, Tag(m.__name__)] for m in models)],  # noqa: UP007
        Discriminator(kind, custom_error_type="invalid_value",
                      custom_error_message=f"`type` must be one of {allowed}"),
    ]


ContentPart = _by_type(InputText, InputImage, OutputText, Refusal)


class Message(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    # Fields of an output message sent back as input.
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @model_validator(mode="after")
    def _parts_by_role(self):
        if isinstance(self.content, str):
            return self
        for part in self.content:
            if isinstance(part, (OutputText, Refusal)) and self.role != "assistant":
                raise ValueError(f"'{part.type}' content is only allowed in 'assistant' "
                                 f"messages, not '{self.role}'")
            if isinstance(part, InputImage) and self.role != "user":
                raise ValueError(f"image content is only allowed in 'user' messages, not "
                                 f"'{self.role}'")
        return self

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, InputImage)
                                                      for p in self.content)


class FunctionCall(_Strict):
    """A tool call from an earlier answer."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutput(_Strict):
    """What the client's function returned for a `function_call`."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[_by_type(InputText, InputImage)]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


# A message may leave out its `type` (OpenAI's "easy input message").
InputItem = _by_type(Message, FunctionCall, FunctionCallOutput, default="message")


# --- tools and output format ----------------------------------------------------------------

class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJSONObject(_Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    name: str = Field(pattern=FUNCTION_NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: _by_type(TextFormatText, TextFormatJSONObject, TextFormatJSONSchema) | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # accepted, ignored


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None  # accepted, ignored: no obfuscation padding


class CreateResponseRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    include: Annotated[list[str] | None, AfterValidator(_no_includes)] = None
    truncation: Literal["disabled"] | None = None
    # Server-side state: not kept here.
    store: Annotated[bool | None, _not_stored("`store: true`")] = None
    previous_response_id: Annotated[str | None, _not_stored("`previous_response_id`")] = None
    conversation: Annotated[Any, _not_stored("`conversation`")] = None
    background: Annotated[bool | None, _not_stored("`background`")] = None
    prompt: Annotated[Any, _unsupported("Stored prompts (`prompt`)")] = None
    # Known to OpenAI, not supported here: rejected by name rather than as unknown.
    reasoning: Annotated[Any, _unsupported("`reasoning`")] = None
    top_logprobs: Annotated[int | None, _unsupported("`top_logprobs`")] = None
    max_tool_calls: Annotated[int | None, _unsupported("`max_tool_calls`")] = None
    context_management: Annotated[Any, _unsupported("`context_management`")] = None
    # Accepted and ignored: bookkeeping that does not change the output.
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=INT64_MAX)  # extension, as in chat

    @model_validator(mode="after")
    def _checks_across_fields(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.")
        if isinstance(self.tool_choice, NamedFunction):
            if self.tool_choice.name not in {t.name for t in self.tools or []}:
                raise ValueError(f"tool_choice names function '{self.tool_choice.name}', "
                                 "which is not in 'tools'")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs 'tools'")
        return self

    def images_at(self) -> int | None:
        """The index of the first input message that holds an image, if any."""
        if isinstance(self.input, str):
            return None
        return next((i for i, item in enumerate(self.input)
                     if isinstance(item, Message) and item.has_images()), None)


# Not forwarded to vLLM: the ignored bookkeeping, and what the router sets itself.
RESPONSES_IGNORED = {
    "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "stream_options", "include", "store",
}
