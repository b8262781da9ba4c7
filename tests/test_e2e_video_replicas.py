"""Video jobs shared by router replicas through PostgreSQL and an S3 store (SeaweedFS), end to
end: `serving up` (router A and the video worker) plus a second router B over the same worker.

- a video created on A is polled, downloaded (whole and by range) and deleted on B, its MP4
  lying in the bucket until then;
- a router SIGKILLed mid-render: the job completes through the other once its lease expires;
- the object store down while a render finishes: the job waits, shown in /ready and /metrics
  and logged once, and completes when the store is back.
"""

from __future__ import annotations

import functools
import io
import secrets
from collections.abc import Iterator
from pathlib import Path

import av
import boto3
import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import ROOT
from tests.support.harness import (
    BackgroundRouter,
    BackgroundStack,
    start_background_router,
    start_background_stack,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

WAIT_S = 300  # renders and restarts on a slow, busy machine; never a timing assertion
wait_for = functools.partial(wait_until, timeout_s=WAIT_S, every_s=0.2)

MODEL = "wan-tiny"
ONLY_VIDEOS = ("workers: {chat: {enabled: false}, images: {enabled: false}, "
               "edits: {enabled: false}, transcription: {enabled: false}, "
               "speech: {enabled: false}}\n")


def overlay(tmp: Path, database: str, bucket: str, endpoint: str) -> Path:
    path = tmp / "replicas.yaml"
    path.write_text(
        f"router:\n  database: '{database}'\n  artifacts: 's3://{bucket}/renders'\n"
        f"  artifacts_endpoint: '{endpoint}'\n"
        "  videos: {lease_s: 4, heartbeat_s: 1, upload_retry_max_s: 2}\n" + ONLY_VIDEOS)
    return path


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, s3
             ) -> Iterator[tuple[BackgroundStack, BackgroundRouter, str, sa.Engine]]:
    bucket = f"videos-{secrets.token_hex(4)}"
    s3.create_bucket(bucket)
    configs = [ROOT / "configs/cpu.yaml", overlay(tmp_path, postgres_url, bucket, s3.endpoint)]
    # Both run this checkout's code, with credentials for the store.
    env = {**s3.env(), "PYTHONPATH": str(ROOT)}
    (tmp_path / "a").mkdir()
    a = start_background_stack(configs, tmp_path / "a", env=env)
    try:
        b = start_background_router(configs, tmp_path / "b", stack=a, env=env)
    except BaseException:
        a.stop()
        raise
    db = sa.create_engine(postgres_url)
    try:
        yield a, b, bucket, db
    finally:
        db.dispose()
        if b.process.poll() is None:
            b.stop()
        a.stop()


def client(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def bucket_keys(s3, bucket: str) -> list[str]:
    env = s3.env()
    c = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                     region_name=env["AWS_DEFAULT_REGION"])
    return [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]


def job_of(http: httpx.Client, video_id: str) -> dict:
    r = http.get(f"/v1/videos/{video_id}")
    assert r.status_code == 200, r.text
    return r.json()


def finished(http: httpx.Client, video_id: str):
    job = job_of(http, video_id)
    return job if job["status"] in ("completed", "failed") else None


def frames_of(mp4: bytes) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height)


def test_created_on_a_served_and_deleted_on_b(replicas, s3):
    from openai import OpenAI

    a, b, bucket, _ = replicas
    sdk_a = OpenAI(base_url=a.v1, api_key=a.key, max_retries=0, timeout=120)
    video = sdk_a.videos.create(model=MODEL, prompt="two routers", size="128x128", seconds="1")
    on_b = client(b.base_url, a.key)
    done = wait_for(lambda: finished(on_b, video.id), "the render")
    assert done["status"] == "completed", done
    assert bucket_keys(s3, bucket) == [f"renders/{video.id}.mp4"]

    sdk_b = OpenAI(base_url=b.v1, api_key=a.key, max_retries=0, timeout=120)
    mp4 = sdk_b.videos.download_content(video.id).read()
    assert frames_of(mp4) == (17, (128, 128))
    r = on_b.get(f"/v1/videos/{video.id}/content", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.content == mp4[:100]
    assert r.headers["content-range"] == f"bytes 0-99/{len(mp4)}"
    assert r.headers["content-type"] == "video/mp4"
    assert video.id in {v["id"] for v in on_b.get("/v1/videos").json()["data"]}

    other = client(b.base_url, a.other_key)  # another key sees nothing on B either
    assert other.get(f"/v1/videos/{video.id}").status_code == 404
    assert other.get(f"/v1/videos/{video.id}/content").status_code == 404
    assert other.delete(f"/v1/videos/{video.id}").status_code == 404

    deleted = on_b.delete(f"/v1/videos/{video.id}").json()
    assert deleted == {"id": video.id, "object": "video.deleted", "deleted": True}
    assert bucket_keys(s3, bucket) == []
    on_a = client(a.base_url, a.key)
    assert on_a.get(f"/v1/videos/{video.id}").status_code == 404
    assert on_a.get(f"/v1/videos/{video.id}/content").status_code == 404


def test_a_router_killed_mid_render_loses_no_job(replicas, s3):
    """B takes a job and is SIGKILLed while the worker renders it: A takes it over once B's
    lease has run out, and completes it."""
    a, b, bucket, db = replicas
    on_a, on_b = client(a.base_url, a.key), client(b.base_url, a.key)
    # A's dispatcher is kept busy with a first job, so only B can take the second.
    first = on_a.post("/v1/videos", json={"model": MODEL, "prompt": "keeps A busy",
                                          "size": "256x256", "num_inference_steps": 30}).json()
    wait_for(lambda: job_of(on_a, first["id"])["status"] ==
             "in_progress", "A to take the first job")
    second = on_b.post("/v1/videos", json={"model": MODEL, "prompt": "outlives B",
                                           "size": "256x256", "num_inference_steps": 60}).json()

    def owner() -> str | None:
        with db.connect() as c:
            return c.execute(sa.text("SELECT lease_owner FROM videos WHERE id = :id"),
                             {"id": second["id"]}).scalar_one()

    held_by = wait_for(owner, "B to take the second job")
    assert f":{b.process.pid}/" in held_by, held_by
    wait_for(lambda: job_of(on_a, second["id"])["progress"] >= 5, "B's render to start")
    b.kill()
    before = job_of(on_a, second["id"])
    assert before["status"] == "in_progress"

    done = wait_for(lambda: finished(on_a, second["id"]), "A to finish the job")
    assert done["status"] == "completed", done
    assert owner() is None  # completed: no lease left
    with db.connect() as c:
        attempts = c.execute(sa.text("SELECT attempts FROM videos WHERE id = :id"),
                             {"id": second["id"]}).scalar_one()
    assert attempts == 2  # B's attempt and A's
    assert finished(on_a, first["id"])["status"] == "completed"  # type: ignore[index]
    r = on_a.get(f"/v1/videos/{second['id']}/content")
    assert r.status_code == 200 and frames_of(r.content)[1] == (256, 256)
    assert f"renders/{second['id']}.mp4" in bucket_keys(s3, bucket)


def test_the_store_down_while_a_render_finishes(replicas, s3):
    """The finished render waits on disk, the job in progress; /ready and /metrics say so and
    the log says it once; once the store is back the job completes with its video."""
    a, b, bucket, _ = replicas
    b.stop()  # one router: this one's log tells the whole story
    on_a = client(a.base_url, a.key)
    admin = client(a.base_url, a.admin_key)
    earlier = on_a.post("/v1/videos", json={"model": MODEL, "prompt": "done before"}).json()
    assert wait_for(lambda: finished(on_a, earlier["id"]), "the first render")["status"] == \
        "completed"
    job = on_a.post("/v1/videos", json={"model": MODEL, "prompt": "while the store is down",
                                        "size": "256x256", "num_inference_steps": 40}).json()
    wait_for(lambda: job_of(on_a, job["id"])["progress"] >= 5, "the render to start")
    s3.stop()
    try:
        # A finished video cannot be downloaded meanwhile: a 503 to retry, not a 500.
        r = on_a.get(f"/v1/videos/{earlier['id']}/content")
        assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        # Deleting one works at once; its object goes once the store is back (the purge).
        assert on_a.delete(f"/v1/videos/{earlier['id']}").json()["deleted"] is True
        assert on_a.get(f"/v1/videos/{earlier['id']}").status_code == 404

        def waiting() -> dict | None:
            ready = on_a.get("/ready").json()
            artifacts = ready["artifacts"]
            return ready if artifacts["uploads_waiting"] == 1 else None

        ready = wait_for(waiting, "the finished render to wait for the store")
        assert ready["status"] == "degraded" and ready["artifacts"]["status"] == "unreachable"
        assert job_of(on_a, job["id"])["status"] == "in_progress"  # not completed without it
        metrics = admin.get("/metrics").text
        assert "serving_video_uploads_waiting 1.0" in metrics
        assert 'serving_artifact_store_failures_total{operation="upload"}' in metrics
        r = on_a.get(f"/v1/videos/{job['id']}/content")
        assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_ready"
        # A few more retries fail while it is down: still one log line about it.
        wait_for(lambda: _failures(admin) >= 2, "a second failed upload")
    finally:
        s3.start()
    done = wait_for(lambda: finished(on_a, job["id"]), "the job to complete")
    assert done["status"] == "completed", done
    r = on_a.get(f"/v1/videos/{job['id']}/content")
    assert r.status_code == 200 and frames_of(r.content)[1] == (256, 256)
    wait_for(lambda: bucket_keys(s3, bucket) == [f"renders/{job['id']}.mp4"],
             "the purge to remove the deleted job's object", every_s=1)
    ready = on_a.get("/ready").json()
    assert ready["status"] == "ready" and ready["artifacts"] == {"status": "up",
                                                                 "uploads_waiting": 0}
    log = a.log_text()
    assert log.count("the video artifact store") == 2, log[-3000:]  # failed once, back once
    assert "answers again" in log


def _failures(admin: httpx.Client) -> float:
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith('serving_artifact_store_failures_total{operation="upload"}'):
            return float(line.split()[-1])
    return 0.0
