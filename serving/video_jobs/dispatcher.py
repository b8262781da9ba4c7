"""Hands queued video jobs to their worker, one at a time per worker, and records the outcome.

A job is never left stuck: a render that fails is marked failed with an error object; a
worker that is down or dies mid-render gets the job back in the queue until `max_attempts`
renders were tried; a router that stops mid-render leaves the job in progress, and the next
start puts it back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import httpx

from serving.router.workers import Worker
from serving.video_jobs.store import Job, JobStore

log = logging.getLogger("serving.video_jobs")

IDLE_POLL_S = 5.0
RETRY_DELAY_S = 2.0


class Dispatcher:
    def __init__(self, store: JobStore, model: str, worker: Worker, max_attempts: int,
                 on_completed: Callable[[Job], None]):
        self.store = store
        self.on_completed = on_completed  # bills the job's seconds
        self.model = model
        self.worker = worker
        self.max_attempts = max_attempts
        self._wakeup = asyncio.Event()
        self._current: tuple[str, asyncio.Task] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def cancel(self, job_id: str) -> None:
        """Stop rendering `job_id` (it was deleted): the worker stops at its next step."""
        if self._current and self._current[0] == job_id:
            self._current[1].cancel()

    async def run(self) -> None:
        while True:
            job = await asyncio.to_thread(self.store.claim_next, self.model)
            if job is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)
                continue
            render = asyncio.create_task(self._render(job))
            self._current = (job.id, render)
            try:
                # Returns when the render ends, also when `cancel` stopped it; raises only
                # when the dispatcher itself is stopped (the job then stays in progress).
                await asyncio.wait({render})
                if not render.cancelled() and (error := render.exception()) is not None:
                    await self._failed(job, "render_failed", f"{type(error).__name__}: {error}")
            finally:
                self._current = None
                render.cancel()

    async def _render(self, job: Job) -> None:
        path = self.store.path(job.id)
        body = {"params": job.params.model_dump(), "output": str(path)}
        try:
            async with self.worker.stream(
                "POST", "/v1/videos/render", json=body,
                timeout=httpx.Timeout(None, connect=self.worker.connect_timeout),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    await self._failed(job, "render_failed",
                                       f"worker answered HTTP {response.status_code}")
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    update = json.loads(line[6:])
                    if update["status"] == "in_progress":
                        await asyncio.to_thread(self.store.progress, job.id, update["progress"])
                    elif update["status"] == "completed":
                        if await asyncio.to_thread(self.store.complete, job.id):
                            self.on_completed(job)
                        log.info("%s completed (%s frames)", job.id, update.get("frames"))
                        return
                    else:
                        error = update.get("error") or {}
                        await self._failed(job, error.get("code", "render_failed"),
                                           error.get("message", "the render failed"))
                        return
            raise httpx.RemoteProtocolError("the worker closed the stream before finishing")
        except httpx.TransportError as e:
            if job.attempts < self.max_attempts:
                log.warning("%s: worker unavailable (%s); requeued", job.id, e)
                await asyncio.to_thread(self.store.requeue, job.id)
                await asyncio.sleep(RETRY_DELAY_S)
            else:
                await self._failed(job, "worker_unavailable",
                                   f"the video worker failed {job.attempts} times: {e}")

    async def _failed(self, job: Job, code: str, message: str) -> None:
        log.warning("%s failed: %s: %s", job.id, code, message)
        await asyncio.to_thread(self.store.fail, job.id, code, message)
