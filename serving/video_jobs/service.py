"""The video API's moving parts, started and stopped with the router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from serving.config.deployment import VideoJobs
from serving.router.registry import Served
from serving.video_jobs.billing import VideoBilling
from serving.video_jobs.dispatcher import Dispatcher
from serving.video_jobs.store import JobStore

log = logging.getLogger("serving.video_jobs")

PURGE_EVERY_S = 60.0


class VideoService:
    def __init__(self, state_dir: Path, config: VideoJobs, served: list[Served],
                 billing: VideoBilling):
        self.config = config
        self.store = JobStore(state_dir, config.retention_s)
        self.dispatchers = {
            s.entry.id: Dispatcher(self.store, s.entry.id, s.worker, config.max_attempts,
                                   billing.completed)
            for s in served
        }
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        requeued = await asyncio.to_thread(self.store.requeue_interrupted)
        if requeued:
            log.info("requeued %d video job(s) interrupted by the last stop", requeued)
        self._tasks = [asyncio.create_task(d.run()) for d in self.dispatchers.values()]
        self._tasks.append(asyncio.create_task(self._purge()))

    async def _purge(self) -> None:
        while True:
            if purged := await asyncio.to_thread(self.store.purge_expired):
                log.info("removed %d expired video job(s)", purged)
            await asyncio.sleep(PURGE_EVERY_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.store.close()
