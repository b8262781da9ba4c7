"""The video API's moving parts, started and stopped with the router: the job store, the
artifact store, one dispatcher per video model, and the purge of deleted and expired jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from serving.config import Config
from serving.db import database_url, make_engine, migrate
from serving.router.registry import Served
from serving.video_jobs.artifact_health import ArtifactHealth
from serving.video_jobs.artifacts import ArtifactsUnavailable, artifact_store
from serving.video_jobs.billing import VideoBilling
from serving.video_jobs.dispatcher import Dispatcher
from serving.video_jobs.store import JobStore, artifact_key

log = logging.getLogger("serving.video_jobs")

PURGE_EVERY_S = 60.0
SPOOL_MAX_AGE_S = 86400.0  # files a crashed router left waiting for the store


class VideoService:
    def __init__(self, config: Config, served: list[Served], billing: VideoBilling,
                 registry: CollectorRegistry):
        self.config = config.router.videos
        self.engine = make_engine(database_url(config, "videos"))
        self.store = JobStore(self.engine, self.config.retention_s, self.config.lease_s)
        self.artifacts = artifact_store(config)
        self.health = ArtifactHealth(self.artifacts.location, registry)
        self.spool = config.state_dir.expanduser() / "video-uploads"
        self.dispatchers = {
            s.entry.id: Dispatcher(self.store, self.artifacts, self.health, s.entry.id,
                                   s.worker, self.config, self.spool, billing.completed)
            for s in served
        }
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Bring the jobs' tables to the newest schema, then start working. Jobs another
        replica is rendering are left alone; those whose replica died are taken over when
        their lease runs out."""
        await asyncio.to_thread(migrate, self.engine, "videos")
        self._tasks = [asyncio.create_task(d.run()) for d in self.dispatchers.values()]
        self._tasks.append(asyncio.create_task(self._purge()))

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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.artifacts.close()
        self.store.close()
