"""The asynchronous video API: create a job, poll it, download the MP4, list and delete jobs.

`POST /v1/videos` is OpenAI's path, `POST /v1/videos/generations` this API's original one;
both take JSON or multipart (the SDK sends multipart). A job belongs to the key that created
it: any other key gets the same 404 as for a job that does not exist. Jobs live in the shared
job store and MP4s in the artifact store, so any router replica answers for any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from serving.config import Modality
from serving.errors import OpenAIError, invalid_request
from serving.protocol.images import random_seed
from serving.protocol.videos import VideoCreateRequest, resolve_video_request
from serving.router.call_worker import CallWorker
from serving.router.context import RequestContext
from serving.router.dependencies import Ctx, ServicesDep, VideosDep
from serving.router.json_body import loads
from serving.video_jobs.artifacts import ArtifactsUnavailable
from serving.video_jobs.service import VideoService
from serving.video_jobs.store import ID_PATTERN, Job

log = logging.getLogger("serving.video_jobs")

router = APIRouter()

T = TypeVar("T")
RETRY_AFTER_S = "5"

_ID = re.compile(ID_PATTERN)

_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": VideoCreateRequest.model_json_schema()},
    "multipart/form-data": {"schema": VideoCreateRequest.model_json_schema()},
}}}


def _owner(ctx: RequestContext) -> str:
    """Jobs belong to the key's hash, whatever the key is named."""
    assert ctx.key is not None
    return ctx.key.sha256


def _not_found(video_id: str) -> OpenAIError:
    shown = video_id if len(video_id) <= 80 else video_id[:80] + "..."
    return OpenAIError(404, f"No video job found with id '{shown}'.", param="video_id",
                       code="not_found")


async def _db(call: Callable[..., T], *args: Any) -> T:
    """A job store call off the event loop; the database unreachable is a 503 to retry."""
    try:
        return await asyncio.to_thread(call, *args)
    except sa.exc.DBAPIError as e:
        log.warning("video jobs: the database failed (%s); answered 503", e)
        raise OpenAIError(503, "The video job store is unavailable right now; retry shortly.",
                          code="service_unavailable",
                          headers={"Retry-After": RETRY_AFTER_S}) from None


async def _job(videos: VideoService, ctx: RequestContext, video_id: str) -> Job:
    if not _ID.fullmatch(video_id):
        raise _not_found(video_id)
    job = await _db(videos.store.get, video_id, _owner(ctx))
    if job is None:
        raise _not_found(video_id)
    return job


async def _body(request: Request) -> VideoCreateRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data") or content_type.startswith(
                "application/x-www-form-urlencoded"):
            form = await request.form()
            data: Any = {k: v for k, v in form.items() if not hasattr(v, "read")}
            if any(hasattr(v, "read") for v in form.values()):
                data["input_reference"] = "file"
        else:
            data = loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("We could not parse the body of your request.",
                              code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    try:
        return VideoCreateRequest.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


async def create_video(request: Request, ctx: Ctx, services: ServicesDep,
                       call: CallWorker) -> dict[str, Any]:
    body = await _body(request)
    served = services.registry.resolve(body.model, Modality.video, "/v1/videos", ctx.key)
    assert served.entry.video is not None
    params = resolve_video_request(body, served.entry.video, random_seed())
    # The job is queued, not sent: admission only; the dispatcher hands it to the worker.
    await call.admit(served)
    videos = services.videos
    assert videos is not None  # there is a video model
    store = videos.store
    owner = _owner(ctx)
    limit = videos.config.max_queued_per_key
    if await _db(store.pending, owner) >= limit:
        raise OpenAIError(429, f"This key already has {limit} video jobs queued or in "
                          "progress; wait for one to finish.", code="too_many_pending_jobs",
                          type="rate_limit_exceeded", headers={"Retry-After": "10"})
    job = await _db(store.create, owner, served.entry.id, f"{params.width}x{params.height}",
                    str(params.seconds), params)
    videos.dispatchers[served.entry.id].wake()
    return job.resource()  # its seconds are billed when the render completes


for _path in ("/v1/videos", "/v1/videos/generations"):
    router.add_api_route(_path, create_video, methods=["POST"], openapi_extra=_CREATE_BODY)


@router.get("/v1/videos")
async def list_videos(
    ctx: Ctx,
    videos: VideosDep,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=100),
    order: str = Query(default="desc", pattern="^(asc|desc)$"),
) -> dict[str, Any]:
    if after is not None and not _ID.fullmatch(after):
        raise invalid_request(f"Invalid value for 'after': '{after}' is not a video id.",
                              param="after", code="invalid_value")
    jobs = await _db(videos.store.list, _owner(ctx), after, limit + 1, order == "desc")
    page = jobs[:limit]
    return {
        "object": "list",
        "data": [job.resource() for job in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(jobs) > limit,
    }


async def retrieve_video(video_id: str, ctx: Ctx, videos: VideosDep) -> dict[str, Any]:
    return (await _job(videos, ctx, video_id)).resource()


for _path in ("/v1/videos/{video_id}", "/v1/videos/generations/{video_id}"):
    router.add_api_route(_path, retrieve_video, methods=["GET"])


@router.get("/v1/videos/{video_id}/content")
async def download_video(video_id: str, request: Request, ctx: Ctx, videos: VideosDep,
                         variant: str = Query(default="video")) -> Response:
    job = await _job(videos, ctx, video_id)
    if variant != "video":
        raise invalid_request(f"Invalid value for 'variant': only 'video' is available, not "
                              f"'{variant}'.", param="variant", code="invalid_value")
    response = None
    if job.status == "completed":
        try:
            response = await videos.artifacts.download(job.artifact_key, f"{job.id}.mp4",
                                                       request.headers.get("range"))
        except ArtifactsUnavailable as e:
            videos.health.failed("download", e)
            raise OpenAIError(503, "The video store is unavailable right now; retry shortly.",
                              code="service_unavailable",
                              headers={"Retry-After": RETRY_AFTER_S}) from None
        videos.health.succeeded()
    if response is None:
        raise OpenAIError(404, f"Video '{video_id}' has no content yet (status: {job.status}).",
                          param="video_id", code="video_not_ready")
    return response


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, ctx: Ctx, videos: VideosDep) -> dict[str, Any]:
    """Gone from the API at once; its MP4 goes now, or at the next purge if the artifact store
    cannot be reached. A replica rendering it stops at its next heartbeat (this one at once)."""
    job = await _job(videos, ctx, video_id)
    if not await _db(videos.store.delete, job.id, _owner(ctx)):
        raise _not_found(video_id)
    if (dispatcher := videos.dispatchers.get(job.model)) is not None:
        dispatcher.cancel(job.id)
    with contextlib.suppress(sa.exc.DBAPIError):  # it is marked deleted: the purge forgets it
        await videos.remove(job.id)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


@router.post("/v1/videos/{video_id}/remix")
async def remix_video(video_id: str) -> None:
    raise OpenAIError(400, "Video remixes are not supported; create a new video instead.",
                      code="unsupported_endpoint")
