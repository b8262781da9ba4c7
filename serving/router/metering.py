"""Admission and metering, the same for every endpoint.

`call_worker` admits a request once its route knows the model and what the request may cost:
the model's cap on requests in flight (503 at once past it, never an unbounded queue) and the
key's rate limits (429) are checked there, and what was let in comes back as a `Ticket`, which
the request's context holds. `middleware/metering.py` sees every authenticated request through
to its last byte, a streamed one included, and then `finish` gives the ticket back: it frees
the in-flight slot, settles the reserved tokens against the actual usage, appends the ledger
record and counts the metrics. No path can keep a slot: the ticket is settled in the
middleware's `finally`. Routes only fill in the request's `Meter` (`context.py`).
"""

from __future__ import annotations

import logging
import time

from starlette.types import Scope

from serving.errors import OpenAIError, speaks_anthropic
from serving.ledger import Ledger, UsageRecord
from serving.router.context import RequestContext, Ticket
from serving.router.keys import Principal
from serving.router.metrics import RouterMetrics
from serving.router.ratelimit import Decision, RateLimiter
from serving.upstream.served import Served

log = logging.getLogger("serving.router")

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer was complete
OVERLOAD_RETRY_AFTER_S = 1


class Metering:
    def __init__(self, limiter: RateLimiter, ledger: Ledger, metrics: RouterMetrics):
        self.limiter = limiter
        self.ledger = ledger
        self.metrics = metrics

    async def admit(self, key: Principal, served: Served, endpoint: str,
                    tokens: int = 0) -> Ticket:
        """Let the request in, or raise the 503 (model at capacity) or 429 (rate limit)."""
        model, worker = served.entry.id, served.worker
        if not worker.try_acquire():
            self.metrics.overloaded.labels(model).inc()
            raise OpenAIError(
                503, f"The model `{model}` is at capacity; retry shortly.",
                type="server_error", code="model_overloaded",
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})
        ticket = Ticket(served, endpoint)
        try:
            decision = await self.limiter.acquire(key.name, key.limits, tokens)
        except Exception as e:
            # The store (Redis) is down: serve without the limits rather than fail every
            # request; the ledger still records it.
            log.warning("rate-limit store unavailable (%s); admitting without limits", e)
        else:
            headers = decision.headers()
            if speaks_anthropic(endpoint):  # its clients read Anthropic's names
                headers.update(decision.anthropic_headers())
            if not decision.allowed:
                worker.release()
                kind = decision.exceeded or "requests"
                self.metrics.rate_limited.labels(key.name, kind).inc()
                raise OpenAIError(429, _limit_message(decision, kind, tokens, headers),
                                  type=kind, code="rate_limit_exceeded", headers=headers)
            ticket.tokens = tokens
            ticket.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.metrics.in_flight.labels(endpoint, model).inc()
        return ticket

    async def finish(self, ctx: RequestContext, endpoint: str, status: int) -> None:
        """Runs once per request, after its last byte (or its client's departure): gives its
        ticket back, if it was admitted, and records what it used."""
        m, key, ticket = ctx.meter, ctx.key, ctx.ticket
        assert key is not None
        if m.incomplete and status < 400:
            status = m.status_override or CLIENT_CLOSED
        latency = time.perf_counter() - m.start
        usage = m.usage
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        model = "-"
        if ticket is not None:
            model = ticket.served.entry.id
            ticket.served.worker.release()
            self.metrics.in_flight.labels(ticket.endpoint, model).dec()
            if ticket.tokens:
                try:
                    await self.limiter.settle(key.name, key.limits,
                                              prompt + completion - ticket.tokens)
                except Exception:  # a store hiccup must not lose the ledger record below
                    log.exception("could not settle rate-limit tokens")
        self.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.metrics.latency.labels(endpoint, model).observe(latency)
        self.metrics.observe_usage(model, usage)
        if m.first_token_at is not None:
            self.metrics.ttft.labels(model).observe(m.first_token_at - m.start)
            decode_s = time.perf_counter() - m.first_token_at
            if completion > 1 and decode_s > 0:
                self.metrics.tokens_per_s.labels(model).observe((completion - 1) / decode_s)
        self.ledger.append(UsageRecord(
            ts=time.time(), request_id=ctx.request_id, key_name=key.name, model=model,
            endpoint=endpoint, status=status, prompt_tokens=prompt,
            completion_tokens=completion,
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_creation_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            images=m.images, audio_seconds=m.audio_seconds, characters=m.characters,
            latency_ms=latency * 1000,
        ))


def _limit_message(decision: Decision, kind: str, tokens: int, headers: dict[str, str]) -> str:
    if decision.too_large and decision.tokens is not None:
        return (f"Request too large: it may use {tokens} tokens, more than this key's limit of "
                f"{decision.tokens.limit} tokens per minute. Lower max_tokens or the input.")
    return (f"Rate limit reached for {kind} per minute on this key. Retry after "
            f"{headers.get('Retry-After', '1')} s.")


def endpoint_label(scope: Scope) -> str:
    """The route's path template, so `/v1/videos/{id}` is one label, not one per job (and a
    path no route matched is one label, whatever a scanner tries)."""
    return getattr(scope.get("route"), "path", None) or "unmatched"
