"""One pipeline call at a time, batching the compatible requests that queued up meanwhile.

A diffusers pipeline is not thread-safe, so calls are serialised. While one call runs, new
requests wait; when it ends, the oldest waiting request and every other waiting request with
the same size, steps and guidance (up to `max_images` images; edits apart from generations) go
into the next call together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from serving.protocol.images import ImageParams
from serving.workers.diffusion import Cancelled
from serving.workers.images.engine import ImageEngine, ImageJob
from serving.workers.images.metrics import BatchMetrics

log = logging.getLogger("serving.workers.images")


class Batcher:
    def __init__(self, engine: ImageEngine, max_images: int,
                 metrics: BatchMetrics | None = None):
        self.engine = engine
        self.max_images = max_images
        self.metrics = metrics or BatchMetrics()
        self._queue: deque[tuple[ImageJob, asyncio.Future[ImageJob]]] = deque()
        self._wakeup = asyncio.Event()

    def submit(self, params: ImageParams) -> tuple[ImageJob, asyncio.Future[ImageJob]]:
        job = self.engine.new_job(params)
        future: asyncio.Future[ImageJob] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        self._wakeup.set()
        return job, future

    def _next_batch(self) -> list[tuple[ImageJob, asyncio.Future[ImageJob]]]:
        waiting = [(j, f) for j, f in self._queue if not j.cancelled and not f.done()]
        self._queue.clear()
        if not waiting:
            return []
        key = waiting[0][0].params.batch_key()
        batch, images = [], 0
        for job, future in waiting:
            fits = images + job.params.n <= self.max_images or not batch
            if job.params.batch_key() == key and fits:
                batch.append((job, future))
                images += job.params.n
            else:
                self._queue.append((job, future))
        return batch

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._next_batch():
                jobs = [job for job, _ in batch]
                try:
                    await asyncio.to_thread(self.engine.generate, jobs)
                except Cancelled:
                    log.info("batch of %d cancelled mid-run", len(jobs))
                    error: BaseException | None = Cancelled()
                except Exception as e:
                    log.exception("pipeline call failed")
                    error = e
                else:
                    error = None
                    self.metrics.observe(jobs[0].params.image is not None, len(jobs),
                                         sum(job.params.n for job in jobs))
                for job, future in batch:
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(job)
                    else:
                        future.set_exception(error)
