"""Liveness (/health: the router answers) and readiness (/ready: every worker answers too).

/ready also shows the video artifact store's state (`artifacts`) where a video model is
served. An unreachable store makes the router `degraded`, not unready: every other endpoint,
and creating and polling videos, still work, and replicas sharing the store would otherwise
all leave the load balancer at once. Finished renders wait for the store meanwhile.
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
    extra: dict[str, object] = {}
    degraded = False
    if services.videos is not None:
        extra["artifacts"] = artifacts = services.videos.health.report()
        degraded = artifacts["status"] != "up"
    if not down:
        return JSONResponse({"status": "degraded" if degraded else "ready", "workers": status,
                             **extra})
    error = OpenAIError(503, f"Workers not ready: {', '.join(down)}", code="not_ready",
                        headers={"Retry-After": "5"})
    return JSONResponse({**error.body(), "workers": status, **extra}, status_code=503,
                        headers=error.headers)
