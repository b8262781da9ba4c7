"""Usage as this API reports it, on every response of every modality.

OpenAI's `prompt_tokens_details` (`cached_tokens`, `cache_write_tokens`) for the SDK, plus
`cache_read_input_tokens` and `cache_creation_input_tokens` for billing, taken from vLLM's
`prompt_tokens_details` (`cached_tokens`, `created_cache_tokens`). Models without prompt
caching report zeros. The Responses API names the same counts `input_tokens`,
`output_tokens` and `input_tokens_details` (`normalize_response_usage`).
"""

from __future__ import annotations

from typing import Any

from serving.upstream.vllm_contract import CACHED_TOKENS, CREATED_CACHE_TOKENS, PROMPT_DETAILS


def _cache(details: dict[str, Any] | None, written: str, caching: bool) -> tuple[int, int]:
    """(tokens read from the prefix cache, tokens written to it) from vLLM's details."""
    if not caching or not details:
        return 0, 0
    return int(details.get(CACHED_TOKENS) or 0), int(details.get(written) or 0)


def normalize_usage(usage: dict[str, Any] | None, *, caching: bool = True) -> dict[str, Any]:
    usage = usage or {}
    cached, created = _cache(usage.get(PROMPT_DETAILS), CREATED_CACHE_TOKENS, caching)
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


def normalize_response_usage(usage: dict[str, Any] | None, *,
                             caching: bool = True) -> dict[str, Any]:
    """A Responses API `usage`: OpenAI's ResponseUsage (vLLM's per-turn lists dropped) plus
    the same two billing fields as chat."""
    usage = usage or {}
    cached, created = _cache(usage.get("input_tokens_details"), "cache_write_tokens", caching)
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    reasoning = int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": created},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": created,
    }
