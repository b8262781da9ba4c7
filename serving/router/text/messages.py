"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, relayed to vLLM.

vLLM serves both endpoints itself (`vllm/entrypoints/anthropic/`: templating, tool parsing,
Anthropic's response shape); the router checks the request (`serving.protocol.messages`),
admits it against the key's limits, salts the prompt cache per key as on chat, and meters the
usage. Errors answer in Anthropic's envelope (`serving.errors.error_response`).

Not yet here: streaming (a clear 400 on `stream: true`) and image blocks (a clear 400), which
need the stream relay and the chat image guard wired in.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from serving.errors import invalid_request
from serving.protocol.messages import CountTokensRequest, MessagesRequest
from serving.router.call_worker import CallWorker
from serving.router.context import Meter
from serving.router.dependencies import Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.keys import Principal
from serving.router.text.common import input_estimate, resolve_text_model, token_budget
from serving.upstream.served import Served

PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"

router = APIRouter(route_class=StrictJSONRoute)


def _refuse_not_yet_relayed(body: CountTokensRequest) -> None:
    if getattr(body, "stream", False):
        raise invalid_request("Streaming is not supported on /v1/messages yet.", param="stream")
    for i, message in enumerate(body.messages):
        for block in message.content if isinstance(message.content, list) else ():
            if block.type == "image":
                raise invalid_request("Image blocks are not supported on /v1/messages yet.",
                                      param=f"messages[{i}].content")


def vllm_request(body: CountTokensRequest, served: Served, key: Principal) -> dict[str, Any]:
    """The body vLLM receives: the model's served name and this key's prompt-cache salt."""
    upstream = body.model_dump(exclude_none=True)
    upstream["model"] = served.entry.id
    upstream["cache_salt"] = key.cache_salt
    return upstream


def meter_usage(m: Meter, usage: dict[str, Any]) -> None:
    """vLLM gives Anthropic's `input_tokens`, which leaves out the cached and cache-writing
    tokens; the ledger's prompt is all of them, as on chat."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    created = int(usage.get("cache_creation_input_tokens") or 0)
    m.usage = {"prompt_tokens": int(usage.get("input_tokens") or 0) + read + created,
               "completion_tokens": int(usage.get("output_tokens") or 0),
               "cache_read_input_tokens": read, "cache_creation_input_tokens": created}


@router.post(PATH)
async def create_message(body: MessagesRequest, request: Request, ctx: Ctx,
                         registry: RegistryDep, call: CallWorker) -> JSONResponse:
    _refuse_not_yet_relayed(body)
    served = resolve_text_model(registry, ctx, body.model, PATH, tools=bool(body.tools))
    assert ctx.key is not None
    upstream = vllm_request(body, served, ctx.key)
    estimate = await input_estimate(request)
    await call.admit(served, token_budget(estimate, served, upstream))
    message = (await call(served, PATH, upstream)).json()
    usage = message.setdefault("usage", {})
    usage.setdefault("cache_read_input_tokens", 0)
    usage.setdefault("cache_creation_input_tokens", 0)
    meter_usage(ctx.meter, usage)
    return JSONResponse(message)


@router.post(COUNT_PATH)
async def count_tokens(body: CountTokensRequest, ctx: Ctx, registry: RegistryDep,
                       call: CallWorker) -> JSONResponse:
    _refuse_not_yet_relayed(body)
    served = resolve_text_model(registry, ctx, body.model, PATH, tools=bool(body.tools))
    assert ctx.key is not None
    return JSONResponse((await call(served, COUNT_PATH, vllm_request(body, served, ctx.key),
                                    tokens=1)).json())
