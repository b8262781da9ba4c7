"""POST /v1/chat/completions: the request vLLM receives, and the route.

The route checks what only the router knows (which model, what it may do), admits the request,
resolves its images (after admission: a key over its limits makes the router fetch nothing),
and relays vLLM's answer (`relay.py`). `vllm_request` is the one place the body vLLM gets is
put together; vLLM does the templating, tool parsing and structured output.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.protocol.chat import CHAT_IGNORED, ChatCompletionRequest
from serving.router.call_worker import CallWorker
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.keys import Principal
from serving.router.text.common import resolve_text_model
from serving.router.text.image_inputs import admit_then_resolve, chat_image_refs
from serving.router.text.relay import relay
from serving.upstream import vllm_contract
from serving.upstream.served import Served

PATH = "/v1/chat/completions"

router = APIRouter(route_class=StrictJSONRoute)


def vllm_request(body: ChatCompletionRequest, served: Served, key: Principal) -> dict[str, Any]:
    """The body vLLM receives for `body`: what the client sent of the supported subset, the
    model's own id, the key's cache salt, and usage on every chunk of a stream."""
    upstream = body.model_dump(exclude_none=True, by_alias=True, exclude=CHAT_IGNORED)
    upstream["model"] = served.entry.id
    for message in upstream["messages"]:
        if message["role"] == "developer":  # OpenAI's newer name for the system role
            message["role"] = "system"
    response_format = upstream.get("response_format")
    if response_format and response_format["type"] == "json_schema" and (
        "json_schema" not in served.entry.capabilities
        or "schema" not in response_format["json_schema"]
    ):
        upstream["response_format"] = {"type": "json_object"}
    # Each key (or cache group) its own prompt cache; clients cannot set this field.
    upstream["cache_salt"] = key.cache_salt
    if body.stream:
        upstream["stream_options"] = vllm_contract.stream_options()
    return upstream


@router.post(PATH)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, ctx: Ctx,
                                 registry: RegistryDep, config: ConfigDep,
                                 call: CallWorker) -> Response:
    served = resolve_text_model(
        registry, ctx, body.model, PATH, tools=bool(body.tools),
        image_param=next((f"messages[{i}].content" for i, m in enumerate(body.messages)
                          if m.has_images()), None))
    assert ctx.key is not None
    upstream = vllm_request(body, served, ctx.key)
    await admit_then_resolve(request, call, served, chat_image_refs(upstream["messages"]),
                             config.router.images, upstream)
    return await relay(call, ctx.meter, served, PATH, upstream, body.include_usage,
                       continuous=body.continuous_usage)
