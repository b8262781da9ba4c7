"""The HTTP shell every media worker shares: errors as OpenAI envelopes, /health, uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from serving.errors import install_error_handlers, model_not_found
from serving.workers.spec import MediaWorkerSpec


def worker_app(spec: MediaWorkerSpec, lifespan: Any) -> FastAPI:
    """A FastAPI app whose `lifespan` loads the model: /health answers once it is loaded."""
    app = FastAPI(title=f"serving worker {spec.name}", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": spec.entry.id}

    return app


def check_model(spec: MediaWorkerSpec, model: str | None) -> None:
    if not spec.serves(model):
        raise model_not_found(str(model))


def serve(app: FastAPI, port: int, host: str = "127.0.0.1") -> None:
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)

