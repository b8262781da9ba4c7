"""Video seconds are billed when a render completes, not when the job is created.

A job that fails, or that its owner deletes before it completes, costs nothing. The ledger
gets one record per completed job, for the key that owns it, under its own endpoint label
(`RENDER_ENDPOINT`) so the creating request's row still counts requests as requests.
"""

from __future__ import annotations

import time

from serving.ledger import Ledger, UsageRecord
from serving.video_jobs.store import Job

RENDER_ENDPOINT = "video.render"


class VideoBilling:
    def __init__(self, ledger: Ledger, key_names: dict[str, str]):
        self.ledger = ledger
        self.key_names = key_names  # key sha256 -> key name, as rate limits and ledger use

    def completed(self, job: Job) -> None:
        """Record `job`'s seconds for its owner. A key removed from the config since the job
        was created is recorded under a name made from the start of its hash."""
        name = self.key_names.get(job.owner) or f"key-{job.owner[:12]}"
        # One event id per job: a render billed again (by another replica, or after a
        # restart) is inserted once.
        self.ledger.append(UsageRecord(
            ts=time.time(), request_id=job.id, key_name=name, model=job.model,
            endpoint=RENDER_ENDPOINT, status=200, video_seconds=float(job.seconds),
            event_id=f"render-{job.id}"))
