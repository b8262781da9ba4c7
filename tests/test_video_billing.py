"""Video seconds are billed once, when the render completes, to the key that owns the job."""

from __future__ import annotations

from pathlib import Path

from serving.ledger import Ledger
from serving.protocol.videos import VideoParams
from serving.video_jobs.billing import RENDER_ENDPOINT, VideoBilling
from serving.video_jobs.store import JobStore

OWNER, OTHER = "a" * 64, "b" * 64


def params(seconds: int) -> VideoParams:
    return VideoParams(prompt="waves", width=128, height=128, seconds=seconds, fps=16,
                       num_frames=17, steps=4, guidance=5.0, seed=1)


def billed(ledger: Ledger) -> dict[str, float]:
    ledger.flush()
    rows = ledger.totals(by=["key", "endpoint"])
    assert {row["endpoint"] for row in rows} <= {RENDER_ENDPOINT}
    return {row["key"]: row["video_seconds"] for row in rows}


def test_only_completed_jobs_are_billed_to_their_owner(tmp_path: Path):
    store = JobStore(tmp_path, retention_s=3600)
    with Ledger(tmp_path / "usage.db") as ledger:
        billing = VideoBilling(ledger, {OWNER: "alice", OTHER: "bob"})

        def finish(job) -> None:  # what the dispatcher does when the worker says completed
            if store.complete(job.id):
                billing.completed(job)

        done = store.create(OWNER, "wan-tiny", "128x128", "2", params(2))
        failed = store.create(OWNER, "wan-tiny", "128x128", "3", params(3))
        deleted = store.create(OTHER, "wan-tiny", "128x128", "4", params(4))
        assert billed(ledger) == {}  # creating a job costs nothing yet

        finish(done)
        finish(done)  # a second completed event bills nothing more
        store.fail(failed.id, "render_failed", "boom")
        assert store.delete(deleted.id, OTHER)
        finish(deleted)  # its render ended after the owner deleted it
        assert billed(ledger) == {"alice": 2.0}
        assert ledger.records()[0].request_id == done.id
    store.close()


def test_a_job_of_a_key_no_longer_configured_is_still_billed(tmp_path: Path):
    store = JobStore(tmp_path, retention_s=3600)
    with Ledger(tmp_path / "usage.db") as ledger:
        job = store.create(OWNER, "wan-tiny", "128x128", "1", params(1))
        assert store.complete(job.id)
        VideoBilling(ledger, {}).completed(job)
        assert billed(ledger) == {f"key-{OWNER[:12]}": 1.0}
    store.close()


def test_a_render_billed_by_two_replicas_counts_once(tmp_path: Path):
    """Each render has one event id (`render-<job id>`), so if two routers sharing the ledger
    both bill it (or one bills it again after a restart), it is in the ledger once."""
    store = JobStore(tmp_path, retention_s=3600)
    job = store.create(OWNER, "wan-tiny", "128x128", "3", params(3))
    with Ledger(tmp_path / "usage.db") as one, Ledger(tmp_path / "usage.db") as two:
        VideoBilling(one, {OWNER: "alice"}).completed(job)
        VideoBilling(two, {OWNER: "alice"}).completed(job)
        assert two.flush()
        assert billed(one) == {"alice": 3.0}
        assert [r.event_id for r in one.records()] == [f"render-{job.id}"]
    store.close()
