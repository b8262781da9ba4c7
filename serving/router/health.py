"""Liveness (/health: the router answers) and readiness (/ready: every worker answers too)."""

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
    if not down:
        return JSONResponse({"status": "ready", "workers": status})
    error = OpenAIError(503, f"Workers not ready: {', '.join(down)}", code="not_ready",
                        headers={"Retry-After": "5"})
    return JSONResponse({**error.body(), "workers": status}, status_code=503,
                        headers=error.headers)
