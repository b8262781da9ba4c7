"""The asynchronous video API: create a job, poll it, download the MP4, list and delete jobs.

`POST /v1/videos` is OpenAI's path, `POST /v1/videos/generations` this API's original one;
both take JSON or multipart (the SDK sends multipart). The rules (a job belongs to the key that
created it, the cap on queued jobs, what a delete does) are `VideoService`'s
(`serving/video_jobs/service.py`); the routes turn HTTP into its calls.
"""

from __future__ import annotations

from typing import Any

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
from serving.video_jobs.service import is_job_id

router = APIRouter()

_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": VideoCreateRequest.model_json_schema()},
    "multipart/form-data": {"schema": VideoCreateRequest.model_json_schema()},
}}}


def _owner(ctx: RequestContext) -> str:
    """Jobs belong to the key's hash, whatever the key is named."""
    assert ctx.key is not None
    return ctx.key.sha256


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
    assert served.entry.video is not None and services.videos is not None
    params = resolve_video_request(body, served.entry.video, random_seed())
    # The job is queued, not sent: admission only; the dispatcher hands it to the worker.
    await call.admit(served)
    job = await services.videos.create(_owner(ctx), served.entry.id, params)
    return job.resource()


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
    if after is not None and not is_job_id(after):
        raise invalid_request(f"Invalid value for 'after': '{after}' is not a video id.",
                              param="after", code="invalid_value")
    jobs = await videos.list(_owner(ctx), after, limit + 1, order == "desc")
    page = jobs[:limit]
    return {
        "object": "list",
        "data": [job.resource() for job in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(jobs) > limit,
    }


async def retrieve_video(video_id: str, ctx: Ctx, videos: VideosDep) -> dict[str, Any]:
    return (await videos.get(_owner(ctx), video_id)).resource()


for _path in ("/v1/videos/{video_id}", "/v1/videos/generations/{video_id}"):
    router.add_api_route(_path, retrieve_video, methods=["GET"])


@router.get("/v1/videos/{video_id}/content")
async def download_video(video_id: str, request: Request, ctx: Ctx, videos: VideosDep,
                         variant: str = Query(default="video")) -> Response:
    job = await videos.get(_owner(ctx), video_id)
    if variant != "video":
        raise invalid_request(f"Invalid value for 'variant': only 'video' is available, not "
                              f"'{variant}'.", param="variant", code="invalid_value")
    return await videos.download(job, request.headers.get("range"))


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, ctx: Ctx, videos: VideosDep) -> dict[str, Any]:
    job = await videos.get(_owner(ctx), video_id)
    await videos.delete(_owner(ctx), job)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


@router.post("/v1/videos/{video_id}/remix")
async def remix_video(video_id: str) -> None:
    raise OpenAIError(400, "Video remixes are not supported; create a new video instead.",
                      code="unsupported_endpoint")
