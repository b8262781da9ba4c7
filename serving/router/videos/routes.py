"""The asynchronous video API: create a job, poll it, download the MP4, list and delete jobs.

`POST /v1/videos` is OpenAI's path, `POST /v1/videos/generations` this API's original one;
both take JSON or multipart (the SDK sends multipart). A job belongs to the key that created
it: any other key gets the same 404 as for a job that does not exist.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import FileResponse

from serving.config import Modality
from serving.errors import OpenAIError, invalid_request
from serving.protocol.images import random_seed
from serving.protocol.videos import VideoCreateRequest, resolve_video_request
from serving.router.call_worker import CallWorker
from serving.router.context import RequestContext
from serving.router.dependencies import Ctx, ServicesDep, VideosDep
from serving.router.json_body import loads
from serving.video_jobs.service import VideoService
from serving.video_jobs.store import ID_PATTERN, Job

router = APIRouter()

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


async def _job(videos: VideoService, ctx: RequestContext, video_id: str) -> Job:
    if not _ID.fullmatch(video_id):
        raise _not_found(video_id)
    job = await asyncio.to_thread(videos.store.get, video_id, _owner(ctx))
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
    if await asyncio.to_thread(store.pending, owner) >= limit:
        raise OpenAIError(429, f"This key already has {limit} video jobs queued or in "
                          "progress; wait for one to finish.", code="too_many_pending_jobs",
                          type="rate_limit_exceeded", headers={"Retry-After": "10"})
    job = await asyncio.to_thread(store.create, owner, served.entry.id,
                                  f"{params.width}x{params.height}", str(params.seconds), params)
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
    jobs = await asyncio.to_thread(videos.store.list, _owner(ctx), after, limit + 1,
                                   order == "desc")
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
async def download_video(video_id: str, ctx: Ctx, videos: VideosDep,
                         variant: str = Query(default="video")) -> FileResponse:
    job = await _job(videos, ctx, video_id)
    if variant != "video":
        raise invalid_request(f"Invalid value for 'variant': only 'video' is available, not "
                              f"'{variant}'.", param="variant", code="invalid_value")
    path = videos.store.path(job.id)
    if job.status != "completed" or not path.is_file():
        raise OpenAIError(404, f"Video '{video_id}' has no content yet (status: {job.status}).",
                          param="video_id", code="video_not_ready")
    return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, ctx: Ctx, videos: VideosDep) -> dict[str, Any]:
    job = await _job(videos, ctx, video_id)
    if not await asyncio.to_thread(videos.store.delete, job.id, _owner(ctx)):
        raise _not_found(video_id)
    if (dispatcher := videos.dispatchers.get(job.model)) is not None:
        dispatcher.cancel(job.id)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


@router.post("/v1/videos/{video_id}/remix")
async def remix_video(video_id: str) -> None:
    raise OpenAIError(400, "Video remixes are not supported; create a new video instead.",
                      code="unsupported_endpoint")
