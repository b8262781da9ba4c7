"""What the text endpoints share: the model a request may use, and what admission reserves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request

from serving.config import Modality
from serving.errors import invalid_request
from serving.router.context import RequestContext
from serving.router.registry import Registry
from serving.upstream.served import Served

# Reserved for each image until the real usage settles it: models count an image as a few
# dozen to a few thousand tokens, whatever the size of its URL.
IMAGE_TOKENS_ESTIMATE = 1024


def resolve_text_model(registry: Registry, ctx: RequestContext, model: str, path: str, *,
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


async def input_estimate(request: Request, image_urls: Sequence[str] = ()) -> int:
    """The prompt's tokens, estimated from the size of the request (about four bytes a token;
    the body is already read, so this costs nothing). Image URLs are not text: a megabyte of
    base64 is not 250k tokens, so each counts as IMAGE_TOKENS_ESTIMATE instead."""
    text_bytes = max(len(await request.body()) - sum(map(len, image_urls)), 0)
    return text_bytes // 4 + 1 + IMAGE_TOKENS_ESTIMATE * len(image_urls)


def token_budget(estimate: int, served: Served, body: dict[str, Any]) -> int:
    """What the rate limiter reserves: the estimated prompt plus the most the answer may use.
    Settled against the real usage when the request ends."""
    most = (body.get("max_completion_tokens") or body.get("max_tokens")
            or body.get("max_output_tokens"))
    if most is None:
        most = max((served.context_length or 0) - estimate, 0)
    return estimate + int(most)
