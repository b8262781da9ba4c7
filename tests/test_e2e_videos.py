"""Asynchronous video through the real stack: router jobs (SQLite) + a diffusers Wan worker."""

from __future__ import annotations

import io

import av
import httpx
import openai
import pytest

from tests.conftest import CHAT_MODEL, start_stack, validate_openai
from tests.support.harness import BackgroundStack
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

MODEL = "wan-tiny"


def wait_done(http: httpx.Client, video_id: str, timeout_s: float = 300) -> list[dict]:
    """Poll until the job ends; returns every state seen."""
    seen = []

    def ended() -> bool:
        seen.append(http.get(f"/v1/videos/{video_id}").json())
        return seen[-1]["status"] in ("completed", "failed")

    wait_until(ended, f"video {video_id} to finish", timeout_s=timeout_s, every_s=0.2)
    return seen


def decode(mp4: bytes) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height)


def test_sdk_create_retrieve_download(client, openai_schema):
    video = client.videos.create(model=MODEL, prompt="waves on a beach", size="128x128",
                                 seconds="1")
    assert video.status == "queued" and video.progress == 0 and video.object == "video"
    video = wait_until(lambda: (v := client.videos.retrieve(video.id)).status in (
        "completed", "failed") and v, "the video to finish", timeout_s=120, every_s=0.2)
    assert video.status == "completed", video.error
    assert video.progress == 100 and video.completed_at and video.expires_at
    content = client.videos.download_content(video.id)
    frames, size = decode(content.read())
    assert frames == 17 and size == (128, 128)  # 1 s at 16 fps: Wan's 4k + 1 frames
    openai_schema(client.videos.retrieve(video.id).model_dump(), "VideoResource")


def test_json_create_on_generations_path_with_extensions(http):
    r = http.post("/v1/videos/generations", json={
        "model": MODEL, "prompt": "a spinning top", "size": "256x256", "seconds": "1",
        "fps": 8, "seed": 7, "num_inference_steps": 12})
    assert r.status_code == 200, r.text
    job = r.json()
    validate_openai(job, "VideoResource")
    assert job["status"] == "queued" and job["completed_at"] is None and job["error"] is None
    seen = wait_done(http, job["id"])
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress), progress  # never goes backwards
    assert seen[-1]["status"] == "completed"
    assert http.get(f"/v1/videos/generations/{job['id']}").json()["status"] == "completed"
    r = http.get(f"/v1/videos/{job['id']}/content")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert decode(r.content) == (9, (256, 256))  # 1 s at 8 fps


def test_list_is_newest_first_and_paginates(http):
    ids = [http.post("/v1/videos", json={"model": MODEL, "prompt": f"clip {i}"}).json()["id"]
           for i in range(3)]
    page = http.get("/v1/videos", params={"limit": 2}).json()
    validate_openai(page, "VideoListResource")
    assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = http.get("/v1/videos", params={"limit": 2, "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    for video_id in ids:
        wait_done(http, video_id)


def test_delete(http, client):
    job = http.post("/v1/videos", json={"model": MODEL, "prompt": "to delete"}).json()
    deleted = http.delete(f"/v1/videos/{job['id']}").json()
    validate_openai(deleted, "DeletedVideoResource")
    assert deleted == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert http.get(f"/v1/videos/{job['id']}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(job["id"])


def test_another_key_sees_nothing(stack, http):
    job = http.post("/v1/videos", json={"model": MODEL, "prompt": "mine"}).json()
    wait_done(http, job["id"])
    # A second key, valid for the same stack, cannot see or touch the first key's job.
    other = httpx.Client(base_url=stack.base_url,
                         headers={"Authorization": f"Bearer {stack.other_key}"})
    for path in (f"/v1/videos/{job['id']}", f"/v1/videos/{job['id']}/content",
                 f"/v1/videos/generations/{job['id']}"):
        assert other.get(path).status_code == 404
    assert other.delete(f"/v1/videos/{job['id']}").status_code == 404
    assert job["id"] not in {v["id"] for v in other.get("/v1/videos").json()["data"]}
    assert http.get(f"/v1/videos/{job['id']}").status_code == 200


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"prompt": ""}, "prompt", 400),
        ({"prompt": "  "}, "prompt", 400),
        ({}, "prompt", 400),
        ({"prompt": "x", "size": "1920x1080"}, "size", 400),
        ({"prompt": "x", "seconds": "4"}, "seconds", 400),
        ({"prompt": "x", "seconds": "0"}, "seconds", 400),
        ({"prompt": "x", "fps": 1000}, "fps", 400),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", 400),
        ({"prompt": "x", "seed": -3}, "seed", 400),
        ({"prompt": "x", "input_reference": {"image_url": "x"}}, "input_reference", 400),
        ({"prompt": "x", "style": "noir"}, "style", 400),
        ({"prompt": "x", "model": "sora-9"}, "model", 404),
        ({"prompt": "x", "model": CHAT_MODEL}, "model", 400),
    ],
)
def test_bad_video_requests(http, body, param, status):
    r = http.post("/v1/videos", json={"model": MODEL, **body})
    assert r.status_code == status, r.text
    validate_openai(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param


def test_bad_multipart_is_rejected_too(http):
    r = http.post("/v1/videos", data={"model": MODEL, "prompt": "x", "seconds": "9"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seconds"
    r = http.post("/v1/videos", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("video_id", [
    "nope", "video_123", "../../etc/passwd", "video_" + "0" * 32, "..%2F..%2Fvideos.db",
    "video_" + "g" * 32,
])
def test_ids_that_are_not_jobs_are_404(http, video_id):
    for path in (f"/v1/videos/{video_id}", f"/v1/videos/{video_id}/content"):
        r = http.get(path)
        assert r.status_code == 404, (path, r.text)
        validate_openai(r.json(), "ErrorResponse")
    assert http.delete(f"/v1/videos/{video_id}").status_code == 404


def test_per_key_cap_on_queued_jobs(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "router: {videos: {max_queued_per_key: 2}}\n"
        "workers: {chat: {enabled: false}, images: {enabled: false}}\n")
    stack = start_stack(tmp_path, "configs/cpu.yaml", str(overlay))
    try:
        http = httpx.Client(base_url=stack.base_url, timeout=60,
                            headers={"Authorization": f"Bearer {stack.key}"})
        slow = {"model": MODEL, "prompt": "slow", "size": "256x256", "num_inference_steps": 100}
        assert http.post("/v1/videos", json=slow).status_code == 200
        assert http.post("/v1/videos", json=slow).status_code == 200
        r = http.post("/v1/videos", json=slow)
        assert r.status_code == 429 and r.headers["retry-after"].isdigit()
        assert r.json()["error"]["code"] == "too_many_pending_jobs"
    finally:
        stack.stop()


def test_restart_mid_job_completes_and_stays_downloadable(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"state_dir: {tmp_path / 'state'}\n"
                       "workers: {chat: {enabled: false}, images: {enabled: false}}\n")
    configs = ("configs/cpu.yaml", str(overlay))
    stack: BackgroundStack = start_stack(tmp_path, *configs)
    key = stack.key
    try:
        http = httpx.Client(base_url=stack.base_url, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
        job = http.post("/v1/videos", json={"model": MODEL, "prompt": "survive a restart",
                                            "size": "256x256",
                                            "num_inference_steps": 100}).json()
        wait_until(lambda: http.get(f"/v1/videos/{job['id']}").json()["progress"] >= 5,
                   "the job to start", timeout_s=120, every_s=0.2)
        before = http.get(f"/v1/videos/{job['id']}").json()
        assert before["status"] == "in_progress"
    finally:
        assert stack.stop() == 0
    # Same state, same key: the job is picked up again and finishes.
    restarted = start_stack(tmp_path, *configs, key=key)
    try:
        http = httpx.Client(base_url=restarted.base_url, timeout=60,
                            headers={"Authorization": f"Bearer {key}"})
        seen = wait_done(http, job["id"])
        assert seen[-1]["status"] == "completed", seen[-1]
        assert min(s["progress"] for s in seen) >= before["progress"]  # never backwards
        r = http.get(f"/v1/videos/{job['id']}/content")
        assert r.status_code == 200 and decode(r.content)[1] == (256, 256)
    finally:
        restarted.stop()
