"""Video jobs in SQLite: the router's durable state for the asynchronous video API.

One row per job; the rendered MP4 sits beside the database. Every change is a single
statement, so a crash at any point leaves a job queued, in progress (requeued at the next
start), completed or failed, never half-written. Calls are quick and synchronous; the routes
run them in a thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.protocol.videos import VideoParams

SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    expires_at INTEGER,
    size TEXT NOT NULL,
    seconds TEXT NOT NULL,
    params TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS videos_owner ON videos (owner, seq);
CREATE INDEX IF NOT EXISTS videos_queue ON videos (model, status, seq);
"""

ID_PATTERN = r"^video_[0-9a-f]{32}$"


def new_id() -> str:
    return "video_" + secrets.token_hex(16)


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


_COLUMNS = ("id, owner, model, status, progress, created_at, completed_at, expires_at, size, "
            "seconds, params, error, attempts")


def _job(row: tuple) -> Job:
    (id_, owner, model, status, progress, created_at, completed_at, expires_at, size, seconds,
     params, error, attempts) = row
    return Job(id_, owner, model, status, progress, created_at, completed_at, expires_at, size,
               seconds, VideoParams.model_validate_json(params),
               json.loads(error) if error else None, attempts)


class JobStore:
    def __init__(self, directory: Path, retention_s: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.files = directory / "videos"
        self.files.mkdir(exist_ok=True)
        self.retention_s = retention_s
        self._db = sqlite3.connect(directory / "videos.db", check_same_thread=False,
                                   isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def path(self, job_id: str) -> Path:
        return self.files / f"{job_id}.mp4"

    def create(self, owner: str, model: str, size: str, seconds: str,
               params: VideoParams) -> Job:
        now = int(time.time())
        job = Job(new_id(), owner, model, "queued", 0, now, None, now + self.retention_s, size,
                  seconds, params, None, 0)
        self._exec(
            f"INSERT INTO videos ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.id, owner, model, job.status, 0, now, None, job.expires_at, size, seconds,
             params.model_dump_json(), None, 0),
        )
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        sql = f"SELECT {_COLUMNS} FROM videos WHERE id = ?"
        args: tuple = (job_id,)
        if owner is not None:
            sql, args = sql + " AND owner = ?", (job_id, owner)
        row = self._exec(sql, args).fetchone()
        return _job(row) if row else None

    def list(self, owner: str, after: str | None, limit: int, newest_first: bool) -> list[Job]:
        op, order = ("<", "DESC") if newest_first else (">", "ASC")
        if after is None:
            rows = self._exec(f"SELECT {_COLUMNS} FROM videos WHERE owner = ? ORDER BY seq "
                              f"{order} LIMIT ?", (owner, limit))
        else:
            rows = self._exec(
                f"SELECT {_COLUMNS} FROM videos WHERE owner = ? AND seq {op} "
                f"(SELECT seq FROM videos WHERE id = ? AND owner = ?) ORDER BY seq {order} "
                "LIMIT ?", (owner, after, owner, limit))
        return [_job(r) for r in rows.fetchall()]

    def pending(self, owner: str) -> int:
        return self._exec("SELECT COUNT(*) FROM videos WHERE owner = ? AND status IN "
                          "('queued', 'in_progress')", (owner,)).fetchone()[0]

    def delete(self, job_id: str, owner: str) -> bool:
        deleted = self._exec("DELETE FROM videos WHERE id = ? AND owner = ?",
                             (job_id, owner)).rowcount > 0
        if deleted:
            self.path(job_id).unlink(missing_ok=True)
        return deleted

    def claim_next(self, model: str) -> Job | None:
        """The oldest queued job of `model`, now marked in progress (one more attempt)."""
        with self._lock:
            row = self._db.execute(
                f"UPDATE videos SET status = 'in_progress', attempts = attempts + 1 WHERE seq = "
                f"(SELECT seq FROM videos WHERE model = ? AND status = 'queued' ORDER BY seq "
                f"LIMIT 1) RETURNING {_COLUMNS}", (model,)).fetchone()
        return _job(row) if row else None

    def progress(self, job_id: str, progress: int) -> None:
        """Progress only moves forward, even when a job is re-rendered after a restart."""
        self._exec("UPDATE videos SET progress = MAX(progress, ?) WHERE id = ?",
                   (progress, job_id))

    def complete(self, job_id: str) -> bool:
        """Mark the job completed; False if it is gone (deleted while it rendered) or was
        already completed, so it is billed once and never after its owner deleted it."""
        now = int(time.time())
        return self._exec(
            "UPDATE videos SET status = 'completed', progress = 100, completed_at = ?, "
            "expires_at = ? WHERE id = ? AND status != 'completed'",
            (now, now + self.retention_s, job_id)).rowcount > 0

    def fail(self, job_id: str, code: str, message: str) -> None:
        now = int(time.time())
        self._exec("UPDATE videos SET status = 'failed', completed_at = ?, error = ? WHERE id = ?",
                   (now, json.dumps({"code": code, "message": message}), job_id))

    def requeue(self, job_id: str) -> None:
        self._exec("UPDATE videos SET status = 'queued' WHERE id = ?", (job_id,))

    def requeue_interrupted(self) -> int:
        """At start: jobs a previous run left in progress go back to the queue."""
        return self._exec("UPDATE videos SET status = 'queued' WHERE status = 'in_progress'"
                          ).rowcount

    def purge_expired(self) -> int:
        now = int(time.time())
        ids = [r[0] for r in self._exec("SELECT id FROM videos WHERE expires_at < ? AND "
                                        "status != 'in_progress'", (now,)).fetchall()]
        for job_id in ids:
            self._exec("DELETE FROM videos WHERE id = ?", (job_id,))
            self.path(job_id).unlink(missing_ok=True)
        return len(ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()
