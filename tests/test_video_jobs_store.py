"""The video job store on SQLite and on a real PostgreSQL: claims under leases, heartbeats,
expiry and take-over, every dispatcher change checked against the lease, concurrent claims."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.db import make_engine, migrate
from serving.protocol.videos import VideoParams
from serving.video_jobs.store import JobStore
from tests.support.wait import wait_until
from tests.test_db_migrate import PRE_MIGRATION_VIDEOS

OWNER, OTHER = "a" * 64, "b" * 64
MODEL = "wan-tiny"


def params(seed: int = 1) -> VideoParams:
    return VideoParams(prompt="waves", width=128, height=128, seconds=1, fps=16,
                       num_frames=17, steps=4, guidance=5.0, seed=seed)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'videos.db'}"
    return request.getfixturevalue("postgres_url")


def open_store(url: str, lease_s: float = 30.0, replica: str = "r1") -> JobStore:
    engine = make_engine(url)
    migrate(engine, "videos")
    return JobStore(engine, retention_s=3600, lease_s=lease_s, replica=replica)


@pytest.fixture
def store(url: str) -> Iterator[JobStore]:
    s = open_store(url)
    yield s
    s.close()


def expire_lease(store: JobStore, job_id: str) -> None:
    """As if the lease holder stopped renewing long ago."""
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE videos SET lease_expires_at = 0 WHERE id = :id"),
                  {"id": job_id})


def test_claims_oldest_first_and_only_its_model(store: JobStore):
    first = store.create(OWNER, MODEL, "128x128", "1", params())
    second = store.create(OWNER, MODEL, "128x128", "1", params())
    store.create(OWNER, "other-model", "128x128", "1", params())
    claimed = store.claim_next(MODEL, max_attempts=2)
    assert claimed is not None and claimed.id == first.id
    assert claimed.status == "in_progress" and claimed.attempts == 1 and claimed.lease
    assert store.claim_next(MODEL, 2).id == second.id  # type: ignore[union-attr]
    assert store.claim_next(MODEL, 2) is None  # both held under live leases


def test_a_held_job_is_not_claimable_until_its_lease_expires(store: JobStore):
    job = store.create(OWNER, MODEL, "128x128", "1", params())
    a = store.claim_next(MODEL, 3)
    assert a is not None and store.claim_next(MODEL, 3) is None
    assert store.heartbeat(a)
    expire_lease(store, job.id)
    b = store.claim_next(MODEL, 3)
    assert b is not None and b.id == job.id and b.lease != a.lease and b.attempts == 2
    # The first holder lost the job: none of its changes land any more.
    assert not store.heartbeat(a)
    assert not store.progress(a, 50)
    assert not store.complete(a)
    assert not store.fail(a, "render_failed", "late")
    assert not store.requeue(a)
    assert not store.release(a)
    assert store.get(job.id).status == "in_progress"  # type: ignore[union-attr]
    assert store.complete(b)
    assert store.get(job.id).status == "completed"  # type: ignore[union-attr]


def test_the_lease_really_expires_with_time(url: str):
    store = open_store(url, lease_s=0.5)
    try:
        store.create(OWNER, MODEL, "128x128", "1", params())
        a = store.claim_next(MODEL, 3)
        assert a is not None
        b = wait_until(lambda: store.claim_next(MODEL, 3), "the lease to expire", timeout_s=30)
        assert b.id == a.id and b.lease != a.lease
    finally:
        store.close()


def test_progress_only_moves_forward_and_renews(store: JobStore):
    store.create(OWNER, MODEL, "128x128", "1", params())
    job = store.claim_next(MODEL, 2)
    assert job is not None
    assert store.progress(job, 40)
    assert store.progress(job, 10)
    assert store.get(job.id).progress == 40  # type: ignore[union-attr]
    # After a take-over the new render starts from 0 again; the job still shows 40.
    expire_lease(store, job.id)
    again = store.claim_next(MODEL, 2)
    assert again is not None and store.progress(again, 5)
    assert store.get(job.id).progress == 40  # type: ignore[union-attr]


def test_requeue_counts_the_attempt_and_release_does_not(store: JobStore):
    store.create(OWNER, MODEL, "128x128", "1", params())
    job = store.claim_next(MODEL, 5)
    assert job is not None and store.release(job)
    assert store.get(job.id).status == "queued"  # type: ignore[union-attr]
    job = store.claim_next(MODEL, 5)
    assert job is not None and job.attempts == 1  # the released attempt did not count
    assert store.requeue(job)
    job = store.claim_next(MODEL, 5)
    assert job is not None and job.attempts == 2


def test_a_job_interrupted_too_often_fails_instead_of_looping(store: JobStore):
    store.create(OWNER, MODEL, "128x128", "1", params())
    nxt = store.create(OWNER, MODEL, "128x128", "1", params())
    for _ in range(2):
        job = store.claim_next(MODEL, 2)
        assert job is not None
        expire_lease(store, job.id)
    claimed = store.claim_next(MODEL, 2)
    assert claimed is not None and claimed.id == nxt.id  # the first one was failed instead
    failed = store.get(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error and failed.error["code"] == "render_interrupted"


def test_delete_hides_the_job_and_drops_the_lease(store: JobStore):
    job = store.create(OWNER, MODEL, "128x128", "1", params())
    claimed = store.claim_next(MODEL, 2)
    assert claimed is not None
    assert not store.delete(job.id, OTHER)  # someone else's key
    assert store.delete(job.id, OWNER)
    assert not store.delete(job.id, OWNER)
    assert store.get(job.id) is None and store.list(OWNER, None, 10, True) == []
    assert store.pending(OWNER) == 0
    assert not store.heartbeat(claimed) and not store.complete(claimed)
    assert store.status(job.id) == "deleted"
    assert store.removable() == [job.id]
    assert store.forget(job.id) and store.status(job.id) is None


def test_ownership_list_and_pending(store: JobStore):
    mine = [store.create(OWNER, MODEL, "128x128", "1", params()) for _ in range(3)]
    store.create(OTHER, MODEL, "128x128", "1", params())
    assert store.get(mine[0].id, OTHER) is None
    assert store.get(mine[0].id, OWNER).params == params()  # type: ignore[union-attr]
    assert [j.id for j in store.list(OWNER, None, 2, True)] == [mine[2].id, mine[1].id]
    assert [j.id for j in store.list(OWNER, mine[1].id, 5, True)] == [mine[0].id]
    assert [j.id for j in store.list(OWNER, mine[0].id, 5, False)] == [mine[1].id, mine[2].id]
    assert store.pending(OWNER) == 3 and store.pending(OTHER) == 1


def test_expired_jobs_are_removable_unless_rendering(store: JobStore):
    done = store.create(OWNER, MODEL, "128x128", "1", params())
    busy = store.create(OWNER, MODEL, "128x128", "1", params())
    job = store.claim_next(MODEL, 2)
    assert job is not None and store.complete(job)
    assert store.claim_next(MODEL, 2) is not None
    with store.engine.begin() as c:
        c.execute(sa.text("UPDATE videos SET expires_at = 1"))
    assert store.removable() == [done.id]
    assert not store.forget(busy.id) and store.forget(done.id)


def test_two_stores_claiming_at_once_never_get_the_same_job(url: str):
    if url.startswith("sqlite"):
        pytest.skip("one router process per SQLite file; replicas share PostgreSQL")
    stores = [open_store(url, replica=f"r{i}") for i in range(2)]
    try:
        created = {stores[0].create(OWNER, MODEL, "128x128", "1", params(i)).id
                   for i in range(40)}
        got: list[list[str]] = [[], [], [], []]
        start = threading.Barrier(4)

        def claim_all(store: JobStore, into: list[str]) -> None:
            start.wait()
            while (job := store.claim_next(MODEL, 2)) is not None:
                into.append(job.id)

        threads = [threading.Thread(target=claim_all, args=(stores[i % 2], got[i]))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        claimed = [job_id for ids in got for job_id in ids]
        assert sorted(claimed) == sorted(created)  # each job exactly once
    finally:
        for s in stores:
            s.close()


def test_an_old_sqlite_file_upgrades_and_its_jobs_are_served(tmp_path: Path):
    """A videos.db from before migrations: its rows stay, a completed job is still served, and
    a job the old router left in progress is taken over by the first claim."""
    path = tmp_path / "videos.db"
    conn = sqlite3.connect(path)
    conn.executescript(PRE_MIGRATION_VIDEOS)
    for job_id, status in (("video_" + "1" * 32, "completed"),
                           ("video_" + "2" * 32, "in_progress")):
        conn.execute(
            "INSERT INTO videos (id, owner, model, status, progress, created_at, completed_at, "
            "expires_at, size, seconds, params, attempts) VALUES (?, ?, ?, ?, 30, 1, 2, ?, "
            "'128x128', '1', ?, 1)",
            (job_id, OWNER, MODEL, status, int(time.time()) + 3600, params().model_dump_json()))
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        old = store.get("video_" + "1" * 32, OWNER)
        assert old is not None and old.status == "completed" and old.params == params()
        assert old.artifact_key == "video_" + "1" * 32 + ".mp4"  # where its MP4 always was
        resumed = store.claim_next(MODEL, 3)
        assert resumed is not None and resumed.id == "video_" + "2" * 32
        assert resumed.attempts == 2 and store.complete(resumed)
    finally:
        store.close()


def test_heartbeats_must_come_within_the_lease():
    from pydantic import ValidationError

    from serving.config.deployment import VideoJobs

    assert VideoJobs().heartbeat_s < VideoJobs().lease_s
    with pytest.raises(ValidationError, match="heartbeat_s"):
        VideoJobs(lease_s=5, heartbeat_s=5)
