"""The artifact stores: a local folder, and a real S3 server (SeaweedFS) under a bucket prefix:
put, download whole and by range, delete, and an unreachable store as `ArtifactsUnavailable`."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import boto3
import pytest
from starlette.responses import Response

from serving.video_jobs.artifacts import (
    ArtifactStore,
    ArtifactsUnavailable,
    LocalArtifacts,
    S3Artifacts,
)

DATA = secrets.token_bytes(300_000)


@pytest.fixture
def s3_env(s3, monkeypatch: pytest.MonkeyPatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        yield LocalArtifacts(tmp_path / "videos")
        return
    s3 = request.getfixturevalue("s3_env")
    bucket = f"art-{secrets.token_hex(4)}"
    s3.create_bucket(bucket)
    store = S3Artifacts(bucket, "some/prefix", s3.endpoint)
    yield store
    store.close()


async def body_of(response: Response) -> tuple[int, dict[str, str], bytes]:
    """Run the response as an ASGI app, as the router would send it."""
    sent: list[dict] = []
    received: list[bool] = []

    async def receive() -> dict:
        if received:  # the client stays connected until the response is sent
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "http_version": "1.1"}
    await response(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_put_download_range_delete(store: ArtifactStore, tmp_path: Path):
    source = tmp_path / "render.mp4"
    source.write_bytes(DATA)

    async def scenario() -> None:
        assert await store.download("video_x.mp4", "video_x.mp4", None) is None
        await store.put("video_x.mp4", source)
        await store.put("video_x.mp4", source)  # a take-over writes the same object again
        response = await store.download("video_x.mp4", "video_x.mp4", None)
        assert response is not None
        status, headers, body = await body_of(response)
        assert status == 200 and body == DATA
        assert headers["content-type"] == "video/mp4"
        assert headers["content-length"] == str(len(DATA))
        assert 'filename="video_x.mp4"' in headers["content-disposition"]
        await store.delete("video_x.mp4")
        await store.delete("video_x.mp4")  # already gone: nothing to do
        assert await store.download("video_x.mp4", "video_x.mp4", None) is None

    asyncio.run(scenario())


def test_s3_range_is_answered_by_the_store(s3_env, tmp_path: Path):
    """A Range header goes to S3 as is: 206 with the slice and its Content-Range; a range past
    the end is a 416 naming the size."""
    bucket = f"rng-{secrets.token_hex(4)}"
    s3_env.create_bucket(bucket)
    store = S3Artifacts(bucket, "p", s3_env.endpoint)
    source = tmp_path / "render.mp4"
    source.write_bytes(DATA)

    async def scenario() -> None:
        await store.put("v.mp4", source)
        response = await store.download("v.mp4", "v.mp4", "bytes=100-199")
        assert response is not None
        status, headers, body = await body_of(response)
        assert status == 206 and body == DATA[100:200]
        assert headers["content-range"] == f"bytes 100-199/{len(DATA)}"
        assert headers["content-length"] == "100" and headers["accept-ranges"] == "bytes"
        response = await store.download("v.mp4", "v.mp4", f"bytes={len(DATA) + 10}-")
        assert response is not None
        status, headers, _ = await body_of(response)
        assert status == 416 and headers["content-range"] == f"bytes */{len(DATA)}"

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_s3_objects_lie_under_the_prefix(s3_env, tmp_path: Path):
    bucket = f"pfx-{secrets.token_hex(4)}"
    s3_env.create_bucket(bucket)
    store = S3Artifacts(bucket, "renders/v1", s3_env.endpoint)
    source = tmp_path / "render.mp4"
    source.write_bytes(DATA)
    asyncio.run(store.put("video_y.mp4", source))
    client = boto3.client("s3", endpoint_url=s3_env.endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["renders/v1/video_y.mp4"]
    assert client.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == DATA
    store.close()


def test_an_unreachable_store_raises_unavailable(s3_env, tmp_path: Path):
    """Nothing listens at the endpoint (and a bucket that does not exist is as bad): every
    operation raises ArtifactsUnavailable, which callers keep their work for."""
    source = tmp_path / "render.mp4"
    source.write_bytes(DATA)
    from serving.launcher.supervisor import free_port

    down = S3Artifacts("nobucket", "", f"http://127.0.0.1:{free_port()}")
    missing_bucket = S3Artifacts(f"none-{secrets.token_hex(4)}", "", s3_env.endpoint)

    async def scenario(store: S3Artifacts) -> None:
        with pytest.raises(ArtifactsUnavailable):
            await store.put("v.mp4", source)
        with pytest.raises(ArtifactsUnavailable):
            await store.delete("v.mp4")

    asyncio.run(scenario(down))
    with pytest.raises(ArtifactsUnavailable):
        asyncio.run(down.download("v.mp4", "v.mp4", None))
    asyncio.run(scenario(missing_bucket))
    down.close()
    missing_bucket.close()


def test_local_store_failures_are_unavailable_too(tmp_path: Path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    store = LocalArtifacts(blocked / "videos")
    source = tmp_path / "render.mp4"
    source.write_bytes(DATA)
    with pytest.raises(ArtifactsUnavailable):
        asyncio.run(store.put("v.mp4", source))
    assert not os.path.exists(blocked / "videos")
