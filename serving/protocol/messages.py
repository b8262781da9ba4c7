"""Request shape for POST /v1/messages: the supported subset of Anthropic's Messages API.

vLLM serves the endpoint itself (`vllm/entrypoints/anthropic/`); this model only decides, before
anything reaches the worker, which requests the router takes, naming the bad field. Like chat
(`chat.py`) it is strict and rejects unknown fields. `cache_control` is accepted and ignored
(vLLM's prefix cache is automatic); `thinking` and the other features a vLLM worker cannot do
are a clear 400 rather than a silent no-op.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, model_validator

from serving.protocol.chat import FUNCTION_NAME, _Strict, _unsupported


class CacheControl(_Strict):
    """Accepted for compatibility; vLLM caches prefixes on its own."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: Annotated[Any, _unsupported("`citations`")] = None


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class UrlSource(_Strict):
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Discriminator("type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(_Strict):
    """An earlier tool call of the assistant, sent back as part of the conversation."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(pattern=FUNCTION_NAME)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Discriminator("type")]] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


UserBlock = Annotated[TextBlock | ImageBlock | ToolResultBlock, Discriminator("type")]
AssistantBlock = Annotated[TextBlock | ToolUseBlock, Discriminator("type")]


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[UserBlock] = Field(min_length=1)


    def has_images(self) -> bool:
        """Whether an image block is here, directly or in a tool result."""
        for block in self.content if isinstance(self.content, list) else ():
            if isinstance(block, ImageBlock) or (
                    isinstance(block, ToolResultBlock) and isinstance(block.content, list)
                    and any(isinstance(b, ImageBlock) for b in block.content)):
                return True
        return False


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[AssistantBlock]


Message = Annotated[UserMessage | AssistantMessage, Discriminator("role")]


class Tool(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    type: Literal["custom"] | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_iff_tool(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("`name` is required with type `tool` and only with it.")
        return self


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class CountTokensRequest(_Strict):
    """POST /v1/messages/count_tokens: the request without the sampling fields."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[Any, _unsupported("`thinking` (extended thinking)")] = None

    def images_at(self) -> int | None:
        """The index of the first message holding an image, if any."""
        return next((i for i, m in enumerate(self.messages)
                     if isinstance(m, UserMessage) and m.has_images()), None)

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> CountTokensRequest:
        choice = self.tool_choice
        names = {tool.name for tool in self.tools or []}
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names `{choice.name}`, which is not in `tools`.")
        return self


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    metadata: Metadata | None = None
    stream: bool = False
    service_tier: Literal["auto", "standard_only"] | None = None
    container: Annotated[Any, _unsupported("`container` (code execution)")] = None
    mcp_servers: Annotated[Any, _unsupported("`mcp_servers`")] = None
    output_config: Annotated[Any, _unsupported("`output_config`")] = None
