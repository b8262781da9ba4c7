"""Operator endpoints: GET /v1/usage (ledger totals) and GET /metrics (Prometheus).

Both need an admin key on the API port. `/metrics` can also be served without a key on a port
of its own (`router.metrics_port`), for a scraper on a private network.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Query
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from serving.errors import OpenAIError, invalid_request
from serving.ledger import GROUP_FIELDS, parse_since
from serving.ledger.queries import one_line
from serving.router.dependencies import AdminCtx, MeteringDep, ServicesDep, services_of
from serving.router.metrics import CONTENT_TYPE
from serving.router.services import Services

router = APIRouter()


def _time(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as e:
        raise invalid_request(str(e), param=param, code="invalid_value") from None


@router.get("/v1/usage")
async def usage(
    _: AdminCtx,
    metering: MeteringDep,
    since: str | None = Query(default=None, description="24h, 7d, an ISO time, or unix s"),
    until: str | None = None,
    by: str = Query(default="", description="Comma-separated: " + ", ".join(GROUP_FIELDS)),
) -> dict[str, Any]:
    fields = [f.strip() for f in by.split(",") if f.strip()]
    if unknown := [f for f in fields if f not in GROUP_FIELDS]:
        raise invalid_request(f"Cannot group usage by {unknown[0]!r}; use any of "
                              f"{', '.join(GROUP_FIELDS)}.", param="by", code="invalid_value")
    ledger = metering.ledger
    start, end = _time(since, "since"), _time(until, "until")

    def read() -> list[dict[str, Any]]:
        if ledger.state().up:
            ledger.flush()  # what was answered before this request is counted in it
        return ledger.totals(start, end, fields)

    try:
        data = await asyncio.to_thread(read)
    except sa.exc.SQLAlchemyError as e:
        raise OpenAIError(
            503, f"The usage ledger's database is unreachable ({one_line(e)}); usage is "
            "buffered and written when it returns. Retry later.", type="server_error",
            code="ledger_unavailable", headers={"Retry-After": "5"}) from None
    return {"object": "list", "by": fields, "since": start, "until": end, "data": data}


async def _metrics(services: Services) -> Response:
    view = services.view
    body = await services.metering.metrics.render(view.workers, view.vllm_workers)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/metrics", include_in_schema=False)
async def metrics(_: AdminCtx, services: ServicesDep) -> Response:
    return await _metrics(services)


def metrics_only_app(app: FastAPI) -> Starlette:
    """The same metrics with no key, for `router.metrics_port`."""

    async def endpoint(_: Any) -> Response:
        return await _metrics(services_of(app))

    return Starlette(routes=[Route("/metrics", endpoint)])
