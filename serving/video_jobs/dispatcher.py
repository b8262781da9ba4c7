"""Hands video jobs to their worker and records the outcome.

A dispatcher renders as many jobs at once as its worker has replicas: each render goes to the
replica with the fewest in flight, so a pool of N video replicas renders N jobs at once from
one router. (A replica renders one job at a time; jobs that reach a busy one, from several
router replicas, wait there with their leases renewed.)

A job is never left stuck and a finished render never dropped:
- a render that fails is marked failed with an error object;
- a worker that is down or dies mid-render gets the job back in the queue until
  `max_attempts` renders were tried;
- the job is held under a lease renewed every `heartbeat_s`; a router replica that dies stops
  renewing it, and once it has run out another replica takes the job over. One that stops
  cleanly hands its job back at once;
- the finished MP4 goes into the artifact store before the job is marked completed. If the
  store cannot take it, it is kept on local disk and uploaded again with backoff, the lease
  still renewed, until the store answers; the job stays in progress meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa

from serving.config.deployment import VideoJobs
from serving.upstream.worker import Worker
from serving.video_jobs.artifact_health import ArtifactHealth
from serving.video_jobs.artifacts import ArtifactStore, ArtifactsUnavailable
from serving.video_jobs.store import Job, JobStore

log = logging.getLogger("serving.video_jobs")

IDLE_POLL_S = 5.0  # other replicas' new jobs are seen this often (this one's: at once)
RETRY_DELAY_S = 2.0
DB_RETRY_MAX_S = 30.0


class Dispatcher:
    def __init__(self, store: JobStore, artifacts: ArtifactStore, health: ArtifactHealth,
                 model: str, worker: Worker, config: VideoJobs, spool: Path,
                 on_completed: Callable[[Job], None]):
        self.store = store
        self.artifacts = artifacts
        self.health = health
        self.on_completed = on_completed  # bills the job's seconds
        self.model = model
        self.worker = worker
        self.config = config
        self.spool = spool  # finished renders wait here for the artifact store
        self._wakeup = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._db_down = False

    def wake(self) -> None:
        self._wakeup.set()

    def cancel(self, job_id: str) -> None:
        """Stop working on `job_id` (it was deleted): the worker stops at its next step."""
        if (running := self._running.get(job_id)) is not None:
            running.lose()

    async def run(self) -> None:
        """One claiming loop per replica of the worker."""
        await asyncio.gather(*(self._slot() for _ in self.worker.replicas))

    async def _slot(self) -> None:
        while True:
            # Cleared before claiming, so that a job created meanwhile is either claimed now
            # or wakes the wait below.
            self._wakeup.clear()
            try:
                job = await asyncio.to_thread(self.store.claim_next, self.model,
                                              self.config.max_attempts)
                self._database_answers()
            except sa.exc.DBAPIError as e:
                self._database_fails("claiming jobs", e)
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)
                continue
            if job.attempts > 1:
                log.info("%s: attempt %d (requeued, or taken over after its router's lease ran "
                         "out)", job.id, job.attempts)
            try:
                await self._run(job)
            except asyncio.CancelledError:
                # The router is stopping: hand the job back so any replica takes it at once.
                with contextlib.suppress(Exception):
                    if self.store.release(job):
                        log.info("%s handed back to the queue (this router is stopping)",
                                 job.id)
                raise
            except Exception:
                # A bug, not the job's fault: the lease runs out and the job is tried again.
                log.exception("%s: unexpected error; the job is retried once its lease expires",
                              job.id)

    async def _run(self, job: Job) -> None:
        running = self._running[job.id] = _Running(
            job, asyncio.create_task(self._from_worker(job)))
        heartbeat = asyncio.create_task(self._heartbeat(running))
        try:
            # Returns when the render ends, also when it was stopped because the lease was
            # lost; raises only when the dispatcher itself is stopped.
            await asyncio.wait({running.render})
            if running.render.cancelled():
                return
            if (error := running.render.exception()) is not None:
                await self._failed(job, "render_failed", f"{type(error).__name__}: {error}")
                return
            if (mp4 := running.render.result()) is not None:
                await self._deliver(running, mp4)
        finally:
            self._running.pop(job.id, None)
            heartbeat.cancel()
            running.render.cancel()

    async def _heartbeat(self, running: _Running) -> None:
        while not running.lost:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                held = await asyncio.to_thread(self.store.heartbeat, running.job)
                self._database_answers()
            except sa.exc.DBAPIError as e:
                self._database_fails("renewing a lease", e)
                continue
            if not held:
                log.warning("%s: this router lost the job (deleted, or taken over by another "
                            "router after this one could not renew its lease); stopped",
                            running.job.id)
                running.lose()

    async def _from_worker(self, job: Job) -> bytes | None:
        """The finished MP4, or None when the outcome is already recorded (failed, requeued)
        or the job was lost."""
        body = {"params": job.params.model_dump()}
        try:
            async with self.worker.stream(
                "POST", "/v1/videos/render", json=body,
                timeout=httpx.Timeout(None, connect=self.worker.connect_timeout),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    await self._failed(job, "render_failed",
                                       f"worker answered HTTP {response.status_code}")
                    return None
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    update = json.loads(line[6:])
                    if update["status"] == "in_progress":
                        with contextlib.suppress(sa.exc.DBAPIError):  # shown progress only
                            await asyncio.to_thread(self.store.progress, job, update["progress"])
                    elif update["status"] == "completed":
                        log.info("%s rendered (%s frames)", job.id, update.get("frames"))
                        return base64.b64decode(update["mp4"])
                    else:
                        error = update.get("error") or {}
                        await self._failed(job, error.get("code", "render_failed"),
                                           error.get("message", "the render failed"))
                        return None
            raise httpx.RemoteProtocolError("the worker closed the stream before finishing")
        except httpx.TransportError as e:
            if job.attempts < self.config.max_attempts:
                log.warning("%s: worker unavailable (%s); requeued", job.id, e)
                with contextlib.suppress(sa.exc.DBAPIError):  # else: its lease runs out
                    await asyncio.to_thread(self.store.requeue, job)
                await asyncio.sleep(RETRY_DELAY_S)
            else:
                await self._failed(job, "worker_unavailable",
                                   f"the video worker failed {job.attempts} times: {e}")
            return None

    async def _deliver(self, running: _Running, mp4: bytes) -> None:
        """Upload the MP4, then mark the job completed (and bill it): a completed job always
        has its video. Until both are done the file is kept on disk and retried."""
        job = running.job
        path = self.spool / f"{job.id}.{(job.lease or '').rsplit('/', 1)[-1]}.mp4"
        waiting = False
        try:
            await asyncio.to_thread(_write, path, mp4)
            delay = 1.0
            while not running.lost:
                try:
                    await self.artifacts.put(job.artifact_key, path)
                    self.health.succeeded()
                    break
                except ArtifactsUnavailable as e:
                    self.health.failed("upload", e)
                    if not waiting:
                        waiting = True
                        self.health.upload_waiting(+1)
                        log.warning("%s: rendered, waiting for the artifact store (%s); "
                                    "kept at %s", job.id, e, path)
                await running.wait_lost(delay)
                delay = min(2 * delay, self.config.upload_retry_max_s)
            else:
                return
            delay = 1.0
            while True:
                try:
                    completed = await self._complete(job)
                    self._database_answers()
                    break
                except sa.exc.DBAPIError as e:
                    self._database_fails("completing a job", e)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, DB_RETRY_MAX_S)
            if completed:
                log.info("%s completed", job.id)
            elif await asyncio.to_thread(self.store.status, job.id) in (None, "deleted"):
                # Deleted while it was uploaded: the object must not outlive the job.
                with contextlib.suppress(ArtifactsUnavailable):
                    await self.artifacts.delete(job.artifact_key)
            # Otherwise another replica owns the job now and writes the same object.
        finally:
            if waiting:
                self.health.upload_waiting(-1)
            path.unlink(missing_ok=True)

    async def _complete(self, job: Job) -> bool:
        """Mark the job completed and bill it. The bill hangs on the database call itself, so
        a router stopping while it runs cannot leave a completed job unbilled."""
        completion = asyncio.ensure_future(asyncio.to_thread(self.store.complete, job))

        def bill(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.exception() is None and done.result():
                self.on_completed(job)

        completion.add_done_callback(bill)
        return await asyncio.shield(completion)

    async def _failed(self, job: Job, code: str, message: str) -> None:
        log.warning("%s failed: %s: %s", job.id, code, message)
        try:
            await asyncio.to_thread(self.store.fail, job, code, message)
        except sa.exc.DBAPIError as e:  # its lease runs out and it is tried again
            self._database_fails("failing a job", e)

    def _database_fails(self, doing: str, error: Exception) -> None:
        if not self._db_down:
            self._db_down = True
            log.error("video jobs of %s: the database failed while %s (%s); retrying. Jobs "
                      "wait meanwhile, none is lost. Check router.database.", self.model, doing,
                      error)

    def _database_answers(self) -> None:
        if self._db_down:
            self._db_down = False
            log.warning("video jobs of %s: the database answers again", self.model)


class _Running:
    """The job a dispatcher works on, and whether it still holds it."""

    def __init__(self, job: Job, render: asyncio.Task[bytes | None]):
        self.job = job
        self.render = render
        self.lost = False
        self._lost = asyncio.Event()

    def lose(self) -> None:
        """Deleted or taken over: stop the render (the worker stops at its next step) and
        any upload."""
        self.lost = True
        self._lost.set()
        self.render.cancel()

    async def wait_lost(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout_s)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
