"""Usage as this API reports it, on every response of every modality.

OpenAI's `prompt_tokens_details` (`cached_tokens`, `cache_write_tokens`) for the SDK, plus
`cache_read_input_tokens` and `cache_creation_input_tokens` for billing, taken from vLLM's
`prompt_tokens_details` (`cached_tokens`, `created_cache_tokens`). Models without prompt
caching report zeros.
"""

from __future__ import annotations

from typing import Any

from serving.router.text.vllm_contract import CACHED_TOKENS, CREATED_CACHE_TOKENS, PROMPT_DETAILS


def normalize_usage(usage: dict[str, Any] | None, *, caching: bool = True) -> dict[str, Any]:
    usage = usage or {}
    details = usage.get(PROMPT_DETAILS) or {}
    cached = int(details.get(CACHED_TOKENS) or 0) if caching else 0
    created = int(details.get(CREATED_CACHE_TOKENS) or 0) if caching else 0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": created},
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": created,
    }
    if usage.get("completion_tokens_details"):
        out["completion_tokens_details"] = usage["completion_tokens_details"]
    return out
