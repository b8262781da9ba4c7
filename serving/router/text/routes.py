"""POST /v1/chat/completions, /v1/completions and /v1/responses, served by vLLM workers.

The routes check what only the router knows (which model, what it is allowed to do), shape the
request for vLLM and hand it to `proxy.forward` (or `responses.forward_response`), which calls
the worker through `call_worker`; vLLM does the templating, tool parsing, structured output and
the Responses state machine.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from serving.protocol.responses import RESPONSES_IGNORED, CreateResponseRequest
from serving.router.call_worker import CallWorker
from serving.router.context import RequestContext
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.registry import Registry, Served
from serving.router.text.image_inputs import (
    chat_image_refs,
    resolve_images,
    responses_image_refs,
)
from serving.router.text.proxy import forward
from serving.router.text.responses import forward_response

router = APIRouter(route_class=StrictJSONRoute)


# Reserved for each image until the real usage settles it: models count an image as a few
# dozen to a few thousand tokens, whatever the size of its URL.
IMAGE_TOKENS_ESTIMATE = 1024


async def _input_estimate(request: Request, image_urls: Sequence[str] = ()) -> int:
    """The prompt's tokens, estimated from the size of the request (about four bytes a token;
    the body is already read, so this costs nothing). Image URLs are not text: a megabyte of
    base64 is not 250k tokens, so each counts as IMAGE_TOKENS_ESTIMATE instead."""
    text_bytes = max(len(await request.body()) - sum(map(len, image_urls)), 0)
    return text_bytes // 4 + 1 + IMAGE_TOKENS_ESTIMATE * len(image_urls)


async def _token_budget(request: Request, served: Served, body: dict[str, Any],
                        image_urls: Sequence[str] = ()) -> int:
    """What the rate limiter reserves: the estimated prompt plus the most the answer may use.
    Settled against the real usage when the request ends."""
    estimate = await _input_estimate(request, image_urls)
    most = (body.get("max_completion_tokens") or body.get("max_tokens")
            or body.get("max_output_tokens"))
    if most is None:
        most = max((served.context_length or 0) - estimate, 0)
    return estimate + int(most)


def _resolve(registry: Registry, ctx: RequestContext, model: str, path: str, *,
             tools: bool = False, image_param: str | None = None) -> Served:
    """The model serving `path` for this key, or the 400 when the request needs what the
    model cannot do: tools, or image input (`image_param` names the first field holding one)."""
    served = registry.resolve(model, Modality.chat, path, ctx.key)
    capabilities = served.entry.capabilities
    if tools and "tool_use" not in capabilities:
        raise invalid_request(f"The model `{model}` does not support tools.", param="tools",
                              code="unsupported_parameter")
    if image_param is not None and "vision" not in capabilities:
        raise invalid_request(f"The model `{model}` does not accept image input.",
                              param=image_param, code="unsupported_parameter")
    return served


async def _forward(request: Request, ctx: Ctx, call: CallWorker, served: Served, path: str,
                   body: dict[str, Any], image_urls: Sequence[str] = ()) -> Response:
    body["model"] = served.entry.id
    # Each key (or cache group) its own prompt cache; clients cannot set this field.
    body["cache_salt"] = ctx.key.cache_salt
    return await forward(call, ctx.meter, served, path, body,
                         tokens=await _token_budget(request, served, body, image_urls))


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, ctx: Ctx,
                                 registry: RegistryDep, config: ConfigDep,
                                 call: CallWorker) -> Response:
    served = _resolve(registry, ctx, body.model, "/v1/chat/completions", tools=bool(body.tools),
                      image_param=next((f"messages[{i}].content"
                                        for i, m in enumerate(body.messages) if m.has_images()),
                                       None))
    capabilities = served.entry.capabilities

    upstream = body.model_dump(exclude_none=True, by_alias=True, exclude=CHAT_IGNORED)
    for message in upstream["messages"]:
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
    # vLLM gets checked data URLs only: it never fetches a client's URL itself.
    images = chat_image_refs(upstream["messages"])
    image_urls = [ref.url for ref in images]  # as sent, for the token estimate
    await resolve_images(images, config.router.images)
    response_format = upstream.get("response_format")
    if response_format and response_format["type"] == "json_schema" and (
        "json_schema" not in capabilities or "schema" not in response_format["json_schema"]
    ):
        upstream["response_format"] = {"type": "json_object"}
    return await _forward(request, ctx, call, served, "/v1/chat/completions", upstream,
                          image_urls)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, ctx: Ctx,
                            registry: RegistryDep, call: CallWorker) -> Response:
    served = registry.resolve(body.model, Modality.chat, "/v1/completions", ctx.key)
    upstream = body.model_dump(exclude_none=True, exclude=COMPLETION_IGNORED)
    return await _forward(request, ctx, call, served, "/v1/completions", upstream)


@router.post("/v1/responses")
async def create_response(body: CreateResponseRequest, request: Request, ctx: Ctx,
                          registry: RegistryDep, config: ConfigDep,
                          call: CallWorker) -> Response:
    images_at = body.images_at()
    served = _resolve(registry, ctx, body.model, "/v1/responses", tools=bool(body.tools),
                      image_param=None if images_at is None else f"input[{images_at}].content")
    capabilities = served.entry.capabilities

    upstream = body.model_dump(exclude_none=True, by_alias=True, exclude=RESPONSES_IGNORED)
    upstream["model"] = served.entry.id
    for item in upstream["input"] if isinstance(upstream["input"], list) else ():
        if item.get("role") == "developer":  # as in chat: the templates know `system`
            item["role"] = "system"
    images = responses_image_refs(upstream["input"])
    image_urls = [ref.url for ref in images]
    await resolve_images(images, config.router.images)
    upstream["store"] = False  # vLLM keeps nothing either (its store is off unless enabled)
    upstream["cache_salt"] = ctx.key.cache_salt  # each key its own prompt cache, as in chat
    text_format = (upstream.get("text") or {}).get("format")
    if text_format and text_format["type"] == "json_schema" and "json_schema" not in capabilities:
        upstream["text"]["format"] = {"type": "json_object"}
    return await forward_response(call, ctx.meter, served, upstream,
                                  tokens=await _token_budget(request, served, upstream,
                                                             image_urls),
                                  input_estimate=await _input_estimate(request, image_urls))
