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
    """Ready when every worker can serve; a pool can with one replica up. The body names each
    worker's state, and each replica's (and pool router's) where a worker has several."""
    workers = services.workers
    probes = await asyncio.gather(*(w.probe() for w in workers.values()))
    status = {name: "up" if w.serves(states) else "down"
              for (name, w), states in zip(workers.items(), probes, strict=True)}
    replicas = {member: "up" if up else "down"
                for w, states in zip(workers.values(), probes, strict=True) if w.pooled
                for member, up in states.items()}
    body = {"workers": status, **({"replicas": replicas} if replicas else {})}
    down = [name for name, state in status.items() if state == "down"]
    ledger = services.metering.ledger.state().describe()
    if not down:
        return JSONResponse({"status": "ready", **body, "ledger": ledger})
    error = OpenAIError(503, f"Workers not ready: {', '.join(down)}", code="not_ready",
                        headers={"Retry-After": "5"})
    return JSONResponse({**error.body(), **body, "ledger": ledger}, status_code=503,
                        headers=error.headers)
