"""Video jobs in `router.database`: the durable state of the asynchronous video API.

One row per job, in SQLite (one router, the default) or PostgreSQL (router replicas sharing
the queue). Every change is one short transaction, so a crash at any point leaves a job queued,
in progress, completed, failed or deleted, never half-written.

A dispatcher takes a job with a *lease*: a token of its own and an expiry it renews while it
renders. Every change a dispatcher makes checks that it still holds the lease, so a replica
that stalled and lost the job cannot complete or fail it under the replica that took it over.
A replica that dies simply stops renewing; once the lease has run out, any replica's next claim
takes the job (this replaces requeueing at start, which would steal jobs other replicas are
rendering). Expiry is read from the replicas' clocks, which must agree to well within a lease
(NTP does this).

A deleted job is first marked `deleted` (invisible to the API at once) and forgotten once its
MP4 is gone from the artifact store, so an unreachable store never leaves an orphaned object.

Calls are quick and synchronous; callers run them in a thread so the event loop never waits on
the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from serving.protocol.videos import VideoParams

ID_PATTERN = r"^video_[0-9a-f]{32}$"

# The table as migrations leave it (serving/db/migrations/videos).
metadata = sa.MetaData()
videos = sa.Table(
    "videos", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("progress", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("completed_at", sa.Integer),
    sa.Column("expires_at", sa.Integer),
    sa.Column("size", sa.Text, nullable=False),
    sa.Column("seconds", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.Float),
)
v = videos.c
_JOB_COLUMNS = (v.id, v.owner, v.model, v.status, v.progress, v.created_at, v.completed_at,
                v.expires_at, v.size, v.seconds, v.params, v.error, v.attempts, v.lease_owner)


def new_id() -> str:
    return "video_" + secrets.token_hex(16)


def artifact_key(job_id: str) -> str:
    """A job's MP4 in the artifact store: one name per job, so a replica that takes a render
    over writes the same object, and deleting the job always finds it."""
    return f"{job_id}.mp4"


def replica_name() -> str:
    """This process among the replicas, as it shows in `lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Job:
    id: str
    owner: str
    model: str
    status: str
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    size: str
    seconds: str
    params: VideoParams
    error: dict[str, str] | None
    attempts: int
    lease: str | None = None  # the claim that holds it (set on a job from `claim_next`)

    @property
    def artifact_key(self) -> str:
        return artifact_key(self.id)

    def resource(self) -> dict[str, Any]:
        """OpenAI's VideoResource."""
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "prompt": self.params.prompt,
            "size": self.size,
            "seconds": self.seconds,
            "remixed_from_video_id": None,
            "error": self.error,
        }


def _job(row: sa.Row) -> Job:
    m = row._mapping
    return Job(m["id"], m["owner"], m["model"], m["status"], m["progress"], m["created_at"],
               m["completed_at"], m["expires_at"], m["size"], m["seconds"],
               VideoParams.model_validate_json(m["params"]),
               json.loads(m["error"]) if m["error"] else None, m["attempts"], m["lease_owner"])


def _claimable(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(v.status == "queued",
                  sa.and_(v.status == "in_progress", v.lease_expires_at < now))


def _removable(now: int) -> sa.ColumnElement[bool]:
    return sa.or_(v.status == "deleted",
                  sa.and_(v.expires_at < now, v.status != "in_progress"))


class JobStore:
    def __init__(self, engine: sa.Engine, retention_s: int, lease_s: float,
                 replica: str | None = None):
        """`engine` must be migrated (`serving.db.migrate(engine, "videos")`)."""
        self.engine = engine
        self.retention_s = retention_s
        self.lease_s = lease_s
        self.replica = replica or replica_name()
        # SQLite has one writer and no row locks: this process's threads take turns (one router
        # process per SQLite file). PostgreSQL needs no lock: rows are locked in the database.
        self._lock: Any = (threading.Lock() if engine.dialect.name == "sqlite"
                           else contextlib.nullcontext())

    def _write(self, statement: sa.Executable) -> int:
        with self._lock, self.engine.begin() as c:
            return c.execute(statement).rowcount

    def _held(self, job: Job) -> sa.ColumnElement[bool]:
        """`job` is still in progress under the claim that took it."""
        return sa.and_(v.id == job.id, v.status == "in_progress", v.lease_owner == job.lease)

    # --- the API's side ------------------------------------------------------------------------

    def create(self, owner: str, model: str, size: str, seconds: str,
               params: VideoParams) -> Job:
        now = int(time.time())
        job = Job(new_id(), owner, model, "queued", 0, now, None, now + self.retention_s, size,
                  seconds, params, None, 0)
        self._write(sa.insert(videos).values(
            id=job.id, owner=owner, model=model, status=job.status, progress=0, created_at=now,
            expires_at=job.expires_at, size=size, seconds=seconds,
            params=params.model_dump_json(), attempts=0))
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        query = sa.select(*_JOB_COLUMNS).where(v.id == job_id, v.status != "deleted")
        if owner is not None:
            query = query.where(v.owner == owner)
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return _job(row) if row else None

    def list(self, owner: str, after: str | None, limit: int, newest_first: bool) -> list[Job]:
        query = sa.select(*_JOB_COLUMNS).where(v.owner == owner, v.status != "deleted")
        if after is not None:
            anchor = sa.select(v.seq).where(v.id == after, v.owner == owner).scalar_subquery()
            query = query.where(v.seq < anchor if newest_first else v.seq > anchor)
        query = query.order_by(v.seq.desc() if newest_first else v.seq.asc()).limit(limit)
        with self.engine.connect() as c:
            return [_job(r) for r in c.execute(query)]

    def pending(self, owner: str) -> int:
        query = sa.select(sa.func.count()).select_from(videos).where(
            v.owner == owner, v.status.in_(("queued", "in_progress")))
        with self.engine.connect() as c:
            return c.execute(query).scalar_one()

    def delete(self, job_id: str, owner: str) -> bool:
        """Mark the job deleted: gone from the API now, its row forgotten (`forget`) once its
        MP4 is out of the artifact store. A replica rendering it loses its lease."""
        return self._write(sa.update(videos).where(
            v.id == job_id, v.owner == owner, v.status != "deleted",
        ).values(status="deleted", lease_owner=None)) > 0

    def status(self, job_id: str) -> str | None:
        """The job's status, `deleted` included; None once it is forgotten."""
        with self.engine.connect() as c:
            return c.execute(sa.select(v.status).where(v.id == job_id)).scalar_one_or_none()

    # --- the dispatchers' side -----------------------------------------------------------------

    def claim_next(self, model: str, max_attempts: int) -> Job | None:
        """The oldest job of `model` that is queued or whose lease ran out, now in progress
        under a new lease (one more attempt). On PostgreSQL, replicas claiming at once skip each
        other's locked rows (FOR UPDATE SKIP LOCKED) instead of queueing behind them.

        A job whose lease ran out after its last allowed attempt (its replicas kept dying
        mid-render) is failed instead of tried again."""
        while True:
            now = time.time()
            with self._lock, self.engine.begin() as c:
                row = c.execute(
                    sa.select(v.seq, v.status, v.attempts)
                    .where(v.model == model, _claimable(now))
                    .order_by(v.seq).limit(1)
                    .with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                guard = sa.and_(v.seq == row.seq, _claimable(now))
                if row.status == "in_progress" and row.attempts >= max_attempts:
                    error = {"code": "render_interrupted", "message": (
                        f"the render was interrupted {row.attempts} times (its router "
                        "stopped or lost the database); create the video again")}
                    c.execute(sa.update(videos).where(guard).values(
                        status="failed", completed_at=int(now), error=json.dumps(error),
                        lease_owner=None, lease_expires_at=None))
                    continue
                lease = f"{self.replica}/{secrets.token_hex(8)}"
                claimed = c.execute(sa.update(videos).where(guard).values(
                    status="in_progress", attempts=v.attempts + 1, lease_owner=lease,
                    lease_expires_at=now + self.lease_s)).rowcount
                if claimed:
                    return _job(c.execute(
                        sa.select(*_JOB_COLUMNS).where(v.seq == row.seq)).one())

    def heartbeat(self, job: Job) -> bool:
        """Renew the lease; False when it is lost (the job was deleted, or its lease ran out
        and another replica took it)."""
        return self._write(sa.update(videos).where(self._held(job)).values(
            lease_expires_at=time.time() + self.lease_s)) > 0

    def progress(self, job: Job, progress: int) -> bool:
        """Progress only moves forward, also when a job is rendered again after a replica
        died; it renews the lease too. False when the lease is lost."""
        return self._write(sa.update(videos).where(self._held(job)).values(
            progress=sa.case((v.progress < progress, progress), else_=v.progress),
            lease_expires_at=time.time() + self.lease_s)) > 0

    def complete(self, job: Job) -> bool:
        """Mark the job completed (its MP4 is in the artifact store). False if the lease is
        lost (deleted, or taken over), so a job is billed once and never after its owner
        deleted it."""
        now = int(time.time())
        return self._write(sa.update(videos).where(self._held(job)).values(
            status="completed", progress=100, completed_at=now, expires_at=now +
            self.retention_s, lease_owner=None, lease_expires_at=None)) > 0

    def fail(self, job: Job, code: str, message: str) -> bool:
        return self._write(sa.update(videos).where(self._held(job)).values(
            status="failed", completed_at=int(time.time()),
            error=json.dumps({"code": code, "message": message}),
            lease_owner=None, lease_expires_at=None)) > 0

    def requeue(self, job: Job) -> bool:
        """Back to the queue after a failed attempt (the worker was unreachable)."""
        return self._write(sa.update(videos).where(self._held(job)).values(
            status="queued", lease_owner=None, lease_expires_at=None)) > 0

    def release(self, job: Job) -> bool:
        """Back to the queue because this replica is stopping: the attempt does not count,
        and the next replica to claim takes it at once instead of after the lease."""
        return self._write(sa.update(videos).where(self._held(job)).values(
            status="queued", attempts=v.attempts - 1, lease_owner=None,
            lease_expires_at=None)) > 0

    # --- the purge's side ----------------------------------------------------------------------

    def removable(self, limit: int = 100) -> list[str]:
        """Ids of deleted jobs and of expired ones not rendering: their MP4s go, then them."""
        query = sa.select(v.id).where(_removable(int(time.time()))).order_by(v.seq).limit(limit)
        with self.engine.connect() as c:
            return list(c.execute(query).scalars())

    def forget(self, job_id: str) -> bool:
        """Remove a removable job's row (after its MP4)."""
        return self._write(sa.delete(videos).where(
            v.id == job_id, _removable(int(time.time())))) > 0

    def close(self) -> None:
        self.engine.dispose()
