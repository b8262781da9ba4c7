"""POST /v1/chat/completions and POST /v1/completions, served by vLLM workers.

The routes check what only the router knows (which model, what it is allowed to do), shape the
request for vLLM and hand it to `proxy.forward`, which calls the worker through `call_worker`;
vLLM does the templating, tool parsing and structured output.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.config import Modality
from serving.errors import invalid_request
from serving.protocol.chat import (
    CHAT_IGNORED,
    COMPLETION_IGNORED,
    ChatCompletionRequest,
    CompletionRequest,
)
from serving.router.call_worker import CallWorker
from serving.router.dependencies import Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.registry import Served
from serving.router.text.proxy import forward

router = APIRouter(route_class=StrictJSONRoute)


async def _token_budget(request: Request, served: Served, body: dict[str, Any]) -> int:
    """What the rate limiter reserves: the prompt, estimated from the size of the request
    (about four bytes a token; the body is already read, so this costs nothing), plus the
    most the answer may use. Settled against the real usage when the request ends."""
    estimate = len(await request.body()) // 4 + 1
    most = body.get("max_completion_tokens") or body.get("max_tokens")
    if most is None:
        most = max((served.context_length or 0) - estimate, 0)
    return estimate + int(most)


async def _forward(request: Request, ctx: Ctx, call: CallWorker, served: Served, path: str,
                   body: dict[str, Any]) -> Response:
    body["model"] = served.entry.id
    # Each key (or cache group) its own prompt cache; clients cannot set this field.
    body["cache_salt"] = ctx.key.cache_salt
    return await forward(call, ctx.meter, served, path, body,
                         tokens=await _token_budget(request, served, body))


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, ctx: Ctx,
                                 registry: RegistryDep, call: CallWorker) -> Response:
    served = registry.resolve(body.model, Modality.chat, "/v1/chat/completions", ctx.key)
    capabilities = served.entry.capabilities
    if body.tools and "tool_use" not in capabilities:
        raise invalid_request(
            f"The model `{body.model}` does not support tools.", param="tools",
            code="unsupported_parameter",
        )
    if "vision" not in capabilities:
        for i, message in enumerate(body.messages):
            if message.has_images():
                raise invalid_request(
                    f"The model `{body.model}` does not accept image input.",
                    param=f"messages[{i}].content", code="unsupported_parameter",
                )

    upstream = body.model_dump(exclude_none=True, by_alias=True, exclude=CHAT_IGNORED)
    for message in upstream["messages"]:
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
    response_format = upstream.get("response_format")
    if response_format and response_format["type"] == "json_schema" and (
        "json_schema" not in capabilities or "schema" not in response_format["json_schema"]
    ):
        upstream["response_format"] = {"type": "json_object"}
    return await _forward(request, ctx, call, served, "/v1/chat/completions", upstream)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, ctx: Ctx,
                            registry: RegistryDep, call: CallWorker) -> Response:
    served = registry.resolve(body.model, Modality.chat, "/v1/completions", ctx.key)
    upstream = body.model_dump(exclude_none=True, exclude=COMPLETION_IGNORED)
    return await _forward(request, ctx, call, served, "/v1/completions", upstream)
