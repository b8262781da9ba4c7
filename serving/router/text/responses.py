"""POST /v1/responses: the request vLLM receives, and the route.

vLLM runs the Responses state machine (templating, tool parsing, structured output, the typed
stream events); `responses_relay.py` reshapes what it writes differently from OpenAI's spec.
Responses are not stored, here or in vLLM: the client sends the conversation in `input`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.protocol.responses import RESPONSES_IGNORED, CreateResponseRequest
from serving.router.call_worker import CallWorker
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.keys import Principal
from serving.router.text.common import resolve_text_model
from serving.router.text.image_inputs import admit_then_resolve, responses_image_refs
from serving.router.text.responses_relay import relay_response
from serving.upstream.served import Served

PATH = "/v1/responses"

router = APIRouter(route_class=StrictJSONRoute)


def vllm_request(body: CreateResponseRequest, served: Served,
                 key: Principal) -> dict[str, Any]:
    """The body vLLM receives for `body` (see `chat.vllm_request`)."""
    upstream = body.model_dump(exclude_none=True, by_alias=True, exclude=RESPONSES_IGNORED)
    upstream["model"] = served.entry.id
    for item in upstream["input"] if isinstance(upstream["input"], list) else ():
        if item.get("role") == "developer":  # as in chat: the templates know `system`
            item["role"] = "system"
    upstream["store"] = False  # vLLM keeps nothing either (its store is off unless enabled)
    upstream["cache_salt"] = key.cache_salt  # each key its own prompt cache, as in chat
    text_format = (upstream.get("text") or {}).get("format")
    if text_format and text_format["type"] == "json_schema" \
            and "json_schema" not in served.entry.capabilities:
        upstream["text"]["format"] = {"type": "json_object"}
    return upstream


@router.post(PATH)
async def create_response(body: CreateResponseRequest, request: Request, ctx: Ctx,
                          registry: RegistryDep, config: ConfigDep,
                          call: CallWorker) -> Response:
    images_at = body.images_at()
    served = resolve_text_model(
        registry, ctx, body.model, PATH, tools=bool(body.tools),
        image_param=None if images_at is None else f"input[{images_at}].content")
    assert ctx.key is not None
    upstream = vllm_request(body, served, ctx.key)
    estimate = await admit_then_resolve(request, call, served,
                                        responses_image_refs(upstream["input"]),
                                        config.router.images, upstream)
    return await relay_response(call, ctx.meter, served, PATH, upstream,
                                input_estimate=estimate)
