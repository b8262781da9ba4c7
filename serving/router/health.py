"""Liveness (/health: the router answers) and readiness (/ready: every worker answers too).

/ready also reports the shared stores: the usage ledger (`"ledger": "ok"` or
`"unreachable (N buffered)"`) and, where a video model is served, the artifact store
(`artifacts`). Neither makes it a 503, only `"status": "degraded"`: requests are still served
(ledger rows buffered up to `router.ledger.max_buffered`, finished renders kept until the store
returns), and a 503 would take every replica sharing the store out of its load balancer at
once, turning a metering or storage outage into a serving outage. Alert on
`serving_ledger_up` and `serving_artifact_store_failures_total` in /metrics instead.
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
    view = services.view
    workers = view.workers
    probes = await asyncio.gather(*(w.probe() for w in workers.values()))
    status = {name: "up" if w.serves(states) else "down"
              for (name, w), states in zip(workers.items(), probes, strict=True)}
    replicas = {member: "up" if up else "down"
                for w, states in zip(workers.values(), probes, strict=True) if w.pooled
                for member, up in states.items()}
    body = {"workers": status, **({"replicas": replicas} if replicas else {})}
    down = [name for name, state in status.items() if state == "down"]
    ledger = services.metering.ledger.state()
    extra: dict[str, object] = {"ledger": ledger.describe(), "config": view.digest}
    degraded = not ledger.up
    if services.videos is not None:
        extra["artifacts"] = artifacts = services.videos.health.report()
        degraded = degraded or artifacts["status"] != "up"
    if not down:
        return JSONResponse({"status": "degraded" if degraded else "ready", **body, **extra})
    error = OpenAIError(503, f"Workers not ready: {', '.join(down)}", code="not_ready",
                        headers={"Retry-After": "5"})
    return JSONResponse({**error.body(), **body, **extra}, status_code=503,
                        headers=error.headers)
