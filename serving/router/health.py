"""Liveness (/health: the router answers) and readiness (/ready: every worker answers too).

/ready also reports the usage ledger (`"ledger": "ok"` or `"unreachable (N buffered)"`), but
an unreachable ledger database does not make it a 503: requests are still served and their
rows buffered (up to `router.ledger.max_buffered`), and a 503 would take every replica out
of its load balancer at once, turning a metering outage into a serving outage. Alert on
`serving_ledger_up` in /metrics instead.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.errors import OpenAIError
from serving.router.dependencies import ServicesDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    workers = services.workers
    states = await asyncio.gather(*(w.healthy() for w in workers.values()))
    status = {name: "up" if ok else "down" for name, ok in zip(workers, states, strict=True)}
    down = [name for name, state in status.items() if state == "down"]
    ledger = services.metering.ledger.state().describe()
    if not down:
        return JSONResponse({"status": "ready", "workers": status, "ledger": ledger})
    error = OpenAIError(503, f"Workers not ready: {', '.join(down)}", code="not_ready",
                        headers={"Retry-After": "5"})
    return JSONResponse({**error.body(), "workers": status, "ledger": ledger},
                        status_code=503, headers=error.headers)
