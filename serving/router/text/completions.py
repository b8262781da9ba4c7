"""POST /v1/completions (legacy): the request vLLM receives, and the route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.protocol.chat import COMPLETION_IGNORED, CompletionRequest
from serving.router.call_worker import CallWorker
from serving.router.dependencies import Ctx, RegistryDep
from serving.router.json_body import StrictJSONRoute
from serving.router.keys import Principal
from serving.router.text.common import input_estimate, resolve_text_model, token_budget
from serving.router.text.relay import relay
from serving.upstream import vllm_contract
from serving.upstream.served import Served

PATH = "/v1/completions"

router = APIRouter(route_class=StrictJSONRoute)


def vllm_request(body: CompletionRequest, served: Served, key: Principal) -> dict[str, Any]:
    """The body vLLM receives for `body` (see `chat.vllm_request`)."""
    upstream = body.model_dump(exclude_none=True, exclude=COMPLETION_IGNORED)
    upstream["model"] = served.entry.id
    upstream["cache_salt"] = key.cache_salt
    if body.stream:
        upstream["stream_options"] = vllm_contract.stream_options()
    return upstream


@router.post(PATH)
async def create_completion(body: CompletionRequest, request: Request, ctx: Ctx,
                            registry: RegistryDep, call: CallWorker) -> Response:
    served = resolve_text_model(registry, ctx, body.model, PATH)
    assert ctx.key is not None
    upstream = vllm_request(body, served, ctx.key)
    tokens = token_budget(await input_estimate(request), served, upstream)
    return await relay(call, ctx.meter, served, PATH, upstream, body.include_usage,
                       continuous=body.continuous_usage, tokens=tokens)
