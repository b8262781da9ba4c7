"""The video API's rules and moving parts, started and stopped with the router: the job store,
the artifact store, one dispatcher per video model, and the purge of deleted and expired jobs.

The routes (`serving/router/videos/`) turn HTTP into calls here: a job belongs to its `owner`
(the hash of the key that created it), and any other owner gets the same 404 as for a job that
does not exist. A database that cannot be reached is a 503 to retry, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from starlette.responses import Response

from serving.config import Config
from serving.db import database_url, make_engine, migrate
from serving.errors import OpenAIError
from serving.protocol.videos import VideoParams
from serving.upstream.served import Served
from serving.video_jobs.artifact_health import ArtifactHealth
from serving.video_jobs.artifacts import ArtifactsUnavailable, artifact_store
from serving.video_jobs.billing import VideoBilling
from serving.video_jobs.dispatcher import Dispatcher
from serving.video_jobs.store import ID_PATTERN, Job, JobStore, artifact_key

log = logging.getLogger("serving.video_jobs")

PURGE_EVERY_S = 60.0
SPOOL_MAX_AGE_S = 86400.0  # files a crashed router left waiting for the store
RETRY_AFTER_S = "5"

T = TypeVar("T")
_ID = re.compile(ID_PATTERN)


def is_job_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def not_found(video_id: str) -> OpenAIError:
    shown = video_id if len(video_id) <= 80 else video_id[:80] + "..."
    return OpenAIError(404, f"No video job found with id '{shown}'.", param="video_id",
                       code="not_found")


def _unavailable(what: str) -> OpenAIError:
    return OpenAIError(503, f"The video {what} is unavailable right now; retry shortly.",
                       code="service_unavailable", headers={"Retry-After": RETRY_AFTER_S})


async def _db(call: Callable[..., T], *args: Any) -> T:
    """A job store call off the event loop; the database unreachable is a 503 to retry."""
    try:
        return await asyncio.to_thread(call, *args)
    except sa.exc.DBAPIError as e:
        log.warning("video jobs: the database failed (%s); answered 503", e)
        raise _unavailable("job store") from None


class VideoService:
    def __init__(self, config: Config, served: list[Served], billing: VideoBilling,
                 registry: CollectorRegistry):
        self.config = config.router.videos
        self.engine = make_engine(database_url(config, "videos"))
        self.store = JobStore(self.engine, self.config.retention_s, self.config.lease_s)
        self.artifacts = artifact_store(config)
        self.health = ArtifactHealth(self.artifacts.location, registry)
        self.spool = config.state_dir.expanduser() / "video-uploads"
        self.billing = billing
        self.dispatchers = {s.entry.id: self._dispatcher(s) for s in served}
        self._runs: dict[str, asyncio.Task] = {}
        self._purging: asyncio.Task | None = None

    def _dispatcher(self, served: Served) -> Dispatcher:
        return Dispatcher(self.store, self.artifacts, self.health, served.entry.id,
                          served.worker, self.config, self.spool, self.billing.completed)

    async def start(self) -> None:
        """Bring the jobs' tables to the newest schema, then start working. Jobs another
        replica is rendering are left alone; those whose replica died are taken over when
        their lease runs out."""
        await asyncio.to_thread(migrate, self.engine, "videos")
        self._runs = {model: asyncio.create_task(d.run())
                      for model, d in self.dispatchers.items()}
        self._purging = asyncio.create_task(self._purge())

    async def update(self, served: list[Served]) -> None:
        """Render for `served` from now on (a reload): a model whose worker changed or left
        stops its dispatcher, which hands its jobs back to the queue to render again; a new
        one starts."""
        wanted = {s.entry.id: s for s in served}
        for model, dispatcher in list(self.dispatchers.items()):
            if model not in wanted or wanted[model].worker is not dispatcher.worker:
                del self.dispatchers[model]
                if (run := self._runs.pop(model, None)) is not None:
                    run.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await run
        for model, s in wanted.items():
            if model not in self.dispatchers:
                self.dispatchers[model] = self._dispatcher(s)
                if self._purging is not None:  # started
                    self._runs[model] = asyncio.create_task(self.dispatchers[model].run())

    async def create(self, owner: str, model: str, params: VideoParams) -> Job:
        """Queue a render for `owner`, or the 429 once it has `max_queued_per_key` queued or
        in progress. Its dispatcher wakes at once; its seconds are billed when it completes."""
        limit = self.config.max_queued_per_key
        if await _db(self.store.pending, owner) >= limit:
            raise OpenAIError(429, f"This key already has {limit} video jobs queued or in "
                              "progress; wait for one to finish.", code="too_many_pending_jobs",
                              type="rate_limit_exceeded", headers={"Retry-After": "10"})
        job = await _db(self.store.create, owner, model, f"{params.width}x{params.height}",
                        str(params.seconds), params)
        self.dispatchers[model].wake()
        return job

    async def get(self, owner: str, video_id: str) -> Job:
        """`owner`'s job, or the 404."""
        job = await _db(self.store.get, video_id, owner) if is_job_id(video_id) else None
        if job is None:
            raise not_found(video_id)
        return job

    async def list(self, owner: str, after: str | None, limit: int,
                   newest_first: bool) -> list[Job]:
        return await _db(self.store.list, owner, after, limit, newest_first)

    async def download(self, job: Job, range_header: str | None) -> Response:
        """The MP4 of a completed job (whole, or the `Range` asked for), or the 404 until then."""
        response = None
        if job.status == "completed":
            try:
                response = await self.artifacts.download(job.artifact_key, f"{job.id}.mp4",
                                                          range_header)
            except ArtifactsUnavailable as e:
                self.health.failed("download", e)
                raise _unavailable("store") from None
            self.health.succeeded()
        if response is None:
            raise OpenAIError(404, f"Video '{job.id}' has no content yet (status: "
                              f"{job.status}).", param="video_id", code="video_not_ready")
        return response

    async def delete(self, owner: str, job: Job) -> None:
        """Gone from the API at once; its MP4 goes now, or at the next purge if the artifact
        store cannot be reached. A replica rendering it stops at its next heartbeat (this one
        at once)."""
        if not await _db(self.store.delete, job.id, owner):
            raise not_found(job.id)
        if (dispatcher := self.dispatchers.get(job.model)) is not None:
            dispatcher.cancel(job.id)
        with contextlib.suppress(sa.exc.DBAPIError):  # marked deleted: the purge forgets it
            await self.remove(job.id)

    async def remove(self, job_id: str) -> bool:
        """A deleted or expired job's MP4 out of the artifact store, then its row. False when
        the store cannot be reached: the job stays marked for the next purge."""
        try:
            await self.artifacts.delete(artifact_key(job_id))
        except ArtifactsUnavailable as e:
            self.health.failed("delete", e)
            return False
        self.health.succeeded()
        await asyncio.to_thread(self.store.forget, job_id)
        return True

    async def _purge(self) -> None:
        while True:
            try:
                ids = await asyncio.to_thread(self.store.removable)
                removed = 0
                for job_id in ids:
                    removed += await self.remove(job_id)
                if removed:
                    log.info("removed %d deleted or expired video job(s)", removed)
            except sa.exc.DBAPIError as e:
                log.warning("video purge: the database failed (%s); trying again in %.0f s",
                            e, PURGE_EVERY_S)
            await asyncio.to_thread(self._clear_spool)
            await asyncio.sleep(PURGE_EVERY_S)

    def _clear_spool(self) -> None:
        cutoff = time.time() - SPOOL_MAX_AGE_S
        with contextlib.suppress(OSError):
            for path in self.spool.glob("*.mp4"):
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)

    async def stop(self) -> None:
        tasks = [*self._runs.values(), *([self._purging] if self._purging else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.artifacts.close()
        self.store.close()
