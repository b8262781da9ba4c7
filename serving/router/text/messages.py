"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, relayed to vLLM.

vLLM serves both endpoints itself (`vllm/entrypoints/anthropic/`: templating, tool parsing,
Anthropic's response shape and stream events); the router checks the request
(`serving.protocol.messages`), admits it against the key's limits, resolves its images under
chat's guard (after admission, as on chat), salts the prompt cache per key as on chat, and
meters the usage (`messages_relay.py`). Errors answer in Anthropic's envelope
(`serving.errors.error_response`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serving.protocol.messages import CountTokensRequest, MessagesRequest
from serving.router.call_worker import CallWorker, WorkerCall
from serving.router.dependencies import ConfigDep, Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.keys import Principal
from serving.router.text.common import resolve_text_model
from serving.router.text.image_inputs import admit_then_resolve, messages_image_refs
from serving.router.text.messages_relay import relay_message
from serving.upstream.served import Served

PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"

router = APIRouter(route_class=StrictJSONRoute)


def vllm_request(body: CountTokensRequest, served: Served, key: Principal) -> dict[str, Any]:
    """The body vLLM receives: the model's served name and this key's prompt-cache salt."""
    upstream = body.model_dump(exclude_none=True)
    upstream["model"] = served.entry.id
    upstream["cache_salt"] = key.cache_salt
    return upstream


async def _prepare(body: CountTokensRequest, request: Request, ctx: Ctx, registry: RegistryDep,
                   config: ConfigDep, call: WorkerCall,
                   most_tokens: int | None) -> tuple[Served, dict[str, Any]]:
    """The model, the admitted request and the body vLLM gets (images resolved). Admitted
    with the prompt's estimate plus the answer's most (`most_tokens`; None for a count)."""
    images_at = body.images_at()
    served = resolve_text_model(
        registry, ctx, body.model, PATH, tools=bool(body.tools),
        image_param=None if images_at is None else f"messages[{images_at}].content")
    assert ctx.key is not None
    upstream = vllm_request(body, served, ctx.key)
    await admit_then_resolve(request, call, served, messages_image_refs(upstream["messages"]),
                             config.router.images,
                             None if most_tokens is None else {"max_tokens": most_tokens})
    return served, upstream


@router.post(PATH)
async def create_message(body: MessagesRequest, request: Request, ctx: Ctx,
                         registry: RegistryDep, config: ConfigDep,
                         call: CallWorker) -> Response:
    served, upstream = await _prepare(body, request, ctx, registry, config, call,
                                      body.max_tokens)
    return await relay_message(call, ctx.meter, served, PATH, upstream)


@router.post(COUNT_PATH)
async def count_tokens(body: CountTokensRequest, request: Request, ctx: Ctx,
                       registry: RegistryDep, config: ConfigDep,
                       call: CallWorker) -> JSONResponse:
    served, upstream = await _prepare(body, request, ctx, registry, config, call, None)
    return JSONResponse((await call(served, COUNT_PATH, upstream)).json())
