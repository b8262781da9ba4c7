"""Request shapes for /v1/chat/completions and /v1/completions: the supported subset.

These models are the public contract (the endpoint table in README.md). They reject what OpenAI
rejects (unknown fields, out-of-range values) and what this API does not support (logprobs,
audio...), naming the field, before anything reaches a worker. What passes is forwarded to vLLM
as the client sent it, minus the fields this API accepts but deliberately ignores.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

INT64_MAX = 2**63 - 1
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


def _unsupported(what: str):
    def check(value: Any) -> Any:
        if value is not None and value is not False:
            raise ValueError(f"{what} is not supported by this API.")
        return value

    return AfterValidator(check)


def _server_only(what: str):
    """A field vLLM takes that a tenant must not set: it would change how the server treats
    other tenants' requests (scheduling priority, whose prompt cache a request may read,
    disaggregated-serving transfers)."""
    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"{what} is set by the server; clients cannot set it.")
        return value

    return AfterValidator(check)


class _Strict(BaseModel):
    # strict: JSON types as OpenAI takes them ("yes" is not a boolean, "3" not an integer).
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None
    # vLLM's extension: with include_usage, the running usage on every chunk.
    continuous_usage_stats: bool | None = None


class VllmExtensions(_Strict):
    """vLLM's documented sampling extensions that benchmark tools (`vllm bench serve`,
    guidellm, aiperf) and vLLM's own clients send, accepted on chat and completions and passed
    to vLLM as sent. The list is the one in docs/api.md; anything else of vLLM's is an unknown
    parameter. What a tenant must not set is refused by name."""

    ignore_eos: bool | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    stop_token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=64)] | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    # Server-side: refused by name (a 400 whose `param` is the field).
    priority: Annotated[Any, _server_only("`priority` (scheduling priority)")] = None
    cache_salt: Annotated[Any, _server_only("`cache_salt` (each key has its own prompt "
                                            "cache)")] = None
    kv_transfer_params: Annotated[Any, _server_only("`kv_transfer_params`")] = None
    ec_transfer_params: Annotated[Any, _server_only("`ec_transfer_params`")] = None
    vllm_xargs: Annotated[Any, _server_only("`vllm_xargs`")] = None


class SamplingRequest(VllmExtensions):
    """Fields chat and legacy completions share, with OpenAI's ranges, and vLLM's extensions."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), le=INT64_MAX)
    user: str | None = Field(default=None, max_length=256)
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """The client wants the running usage on every chunk (vLLM's extension)."""
        return self.include_usage and bool(self.stream_options.continuous_usage_stats)


# --- chat -----------------------------------------------------------------------------------

class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # Fields the SDK sends back when a response message is reused as input.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    function_call: Any = None

    @model_validator(mode="after")
    def _content_by_role(self):
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        elif self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        if self.role != "user" and isinstance(self.content, list) and any(
            isinstance(p, ImagePart) for p in self.content
        ):
            raise ValueError(f"image content is only allowed in 'user' messages, not "
                             f"'{self.role}'")
        return self

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(isinstance(p, ImagePart)
                                                      for p in self.content)


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchema(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when type is 'json_schema'")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError("'json_schema' is only allowed when type is 'json_schema'")
        return self


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: Annotated[bool | None, _unsupported("logprobs")] = None
    top_logprobs: Annotated[int | None, _unsupported("top_logprobs")] = None
    # Known to OpenAI, not supported here: rejected by name rather than as unknown.
    audio: Annotated[Any, _unsupported("Audio output")] = None
    prediction: Annotated[Any, _unsupported("Predicted outputs")] = None
    web_search_options: Annotated[Any, _unsupported("Web search")] = None
    functions: Annotated[Any, _unsupported("`functions` (deprecated; use `tools`)")] = None
    function_call: Annotated[Any, _unsupported("`function_call` (deprecated; use "
                                               "`tool_choice`)")] = None
    modalities: list[Literal["text"]] | None = None
    # Accepted and ignored: bookkeeping that does not change the output.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self):
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names function '{self.tool_choice.function.name}', which is "
                    "not in 'tools'"
                )
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs 'tools'")
        return self


CHAT_IGNORED = {
    "n", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "verbosity", "modalities",
}


# --- legacy completions ---------------------------------------------------------------------

Prompt = (
    Annotated[str, Field()]
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                Field(min_length=1)]
)


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1, le=1,
                                description="Only 1: best_of > 1 is not supported.")
    logprobs: Annotated[int | None, _unsupported("logprobs")] = None
    suffix: Annotated[str | None, _unsupported("suffix")] = None


COMPLETION_IGNORED = {"n", "best_of"}
