"""The video dispatcher over a pool of render replicas (real HTTP servers on loopback that
speak the video worker's render protocol): one router renders as many jobs at once as the
pool has replicas, each on its own replica."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from serving.config.deployment import Timeouts, VideoJobs
from serving.db import make_engine, migrate
from serving.upstream.worker import Endpoints, Worker
from serving.video_jobs.artifact_health import ArtifactHealth
from serving.video_jobs.artifacts import LocalArtifacts
from serving.video_jobs.dispatcher import Dispatcher
from serving.video_jobs.store import JobStore
from tests.support.loopback import LoopbackServer, QuietHandler
from tests.test_video_jobs_store import MODEL, OWNER, params

MP4 = b"\x00\x00\x00\x18ftypmp42 not really a video"


class RenderReplica(LoopbackServer):
    """Answers `POST /v1/videos/render` as the video worker does (progress, then the MP4),
    but only once every replica holds a render at the same time: the `meeting` barrier breaks,
    and the render fails, when renders come one after another."""

    def __init__(self, meeting: threading.Barrier):
        self.renders = 0
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.renders += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self._event({"status": "in_progress", "progress": 10})
                try:
                    meeting.wait(timeout=30)
                    self._event({"status": "completed", "frames": 17,
                                 "mp4": base64.b64encode(MP4).decode()})
                except threading.BrokenBarrierError:
                    self._event({"status": "failed", "error": {
                        "code": "render_failed", "message": "renders were not concurrent"}})

            def _event(self, event: dict) -> None:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()

        super().__init__(Handler)


def test_a_pool_of_two_renders_two_jobs_at_once_one_on_each_replica(tmp_path: Path):
    meeting = threading.Barrier(2)
    replicas = [RenderReplica(meeting), RenderReplica(meeting)]
    engine = make_engine(f"sqlite:///{tmp_path / 'videos.db'}")
    migrate(engine, "videos")
    store = JobStore(engine, retention_s=3600, lease_s=30.0)
    artifacts = LocalArtifacts(tmp_path / "videos")
    completed: list[str] = []

    async def run() -> None:
        worker = Worker("wan", Endpoints(tuple(r.url for r in replicas)), Timeouts(),
                        max_connections=4)
        dispatcher = Dispatcher(
            store, artifacts, ArtifactHealth(artifacts.location, CollectorRegistry()), MODEL,
            worker, VideoJobs(), tmp_path / "spool", lambda job: completed.append(job.id))
        jobs = [store.create(OWNER, MODEL, "128x128", "1", params(seed)) for seed in (1, 2)]
        task = asyncio.create_task(dispatcher.run())
        try:
            for _ in range(600):
                if all(store.status(j.id) in ("completed", "failed") for j in jobs):
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await worker.aclose()
        for job in jobs:
            done = store.get(job.id)
            assert done is not None and done.status == "completed", done
            assert (artifacts.folder / job.artifact_key).read_bytes() == MP4
        assert sorted(completed) == sorted(j.id for j in jobs)

    try:
        asyncio.run(run())
    finally:
        for r in replicas:
            r.close()
        store.close()
    assert [r.renders for r in replicas] == [1, 1]
