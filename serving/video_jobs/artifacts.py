"""Where rendered MP4s live: a local folder (one node, the default) or an S3-compatible bucket
(router replicas on several nodes).

`router.artifacts` picks the store: unset is `state_dir/videos` (where MP4s always were, so a
store kept from before keeps serving its files), `file:///path` another folder, and
`s3://BUCKET/PREFIX` a bucket (`router.artifacts_endpoint` for stores other than AWS;
credentials from the standard AWS environment variables, which boto3 reads itself).

Every failure to reach the store raises `ArtifactsUnavailable`, which callers keep work for and
retry (uploads) or answer with a 503 (downloads); a missing object is not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from starlette.responses import FileResponse, Response, StreamingResponse

if TYPE_CHECKING:
    from serving.config import Config

MEDIA_TYPE = "video/mp4"
CHUNK_BYTES = 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


class ArtifactsUnavailable(Exception):
    """The store could not be reached or refused the operation; nothing was lost."""


class ArtifactStore(Protocol):
    location: str  # where the store is, for logs and /ready

    async def put(self, key: str, source: Path) -> None:
        """Store the file `source` as `key`, replacing any object of that name."""

    async def delete(self, key: str) -> None:
        """Remove `key`; nothing happens if it is not there."""

    async def download(self, key: str, filename: str, range_header: str | None
                       ) -> Response | None:
        """The object as an HTTP response (a single `Range` honoured), or None if absent."""

    def close(self) -> None: ...


def artifact_store(config: Config) -> ArtifactStore:
    url = config.router.artifacts
    if url is None:
        return LocalArtifacts(config.state_dir / "videos")
    if url.startswith("file://"):
        return LocalArtifacts(Path(unquote(urlparse(url).path)))
    parsed = urlparse(url)
    return S3Artifacts(parsed.netloc, parsed.path.strip("/"), config.router.artifacts_endpoint)


class LocalArtifacts:
    """A folder: the router and everything it serves on one node."""

    def __init__(self, folder: Path):
        self.folder = folder.expanduser()
        self.location = str(self.folder)

    def _path(self, key: str) -> Path:
        return self.folder / key

    async def put(self, key: str, source: Path) -> None:
        def copy() -> None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, self._path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        try:
            await asyncio.to_thread(copy)
        except OSError as e:
            raise ArtifactsUnavailable(f"{type(e).__name__}: {e}") from e

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as e:
            raise ArtifactsUnavailable(f"{type(e).__name__}: {e}") from e

    async def download(self, key: str, filename: str, range_header: str | None
                       ) -> Response | None:
        path = self._path(key)
        if not await asyncio.to_thread(path.is_file):
            return None
        # Starlette reads the request's Range itself (single and multiple ranges, 416s).
        return FileResponse(path, media_type=MEDIA_TYPE, filename=filename)

    def close(self) -> None:
        pass


class S3Artifacts:
    """A bucket (under a prefix) of any S3-compatible store. boto3 is synchronous: every call
    runs in a thread. Its own retries are few and its timeouts short, because callers retry
    uploads themselves and a download should fail fast when the store is down."""

    def __init__(self, bucket: str, prefix: str, endpoint: str | None):
        import boto3
        from botocore.config import Config as BotoConfig

        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.location = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint}" if endpoint else "")
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=BotoConfig(
                connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                retries={"max_attempts": 2, "mode": "standard"},
                # Other stores than AWS serve buckets by path, not as host names.
                s3={"addressing_style": "path" if endpoint else "auto"}))

    def key(self, key: str) -> str:
        return self.prefix + key

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self.client, method), **kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "InvalidRange"):
                raise
            raise ArtifactsUnavailable(f"{method}: {e}") from e
        except BotoCoreError as e:
            raise ArtifactsUnavailable(f"{method}: {e}") from e

    async def put(self, key: str, source: Path) -> None:
        from boto3.exceptions import S3UploadFailedError

        try:
            await self._call("upload_file", Filename=str(source), Bucket=self.bucket,
                             Key=self.key(key), ExtraArgs={"ContentType": MEDIA_TYPE})
        except S3UploadFailedError as e:
            raise ArtifactsUnavailable(f"upload_file: {e}") from e

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=self.key(key))

    async def download(self, key: str, filename: str, range_header: str | None
                       ) -> Response | None:
        """S3 answers the range itself: its status (200, 206), Content-Range and length are
        passed on, the body streamed a chunk at a time."""
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(key)}
        if range_header:
            args["Range"] = range_header
        try:
            obj = await self._call("get_object", **args)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                size = await self._size(key)
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            return None
        headers = {"accept-ranges": "bytes", "content-length": str(obj["ContentLength"]),
                   "content-disposition": f'attachment; filename="{filename}"'}
        if "ContentRange" in obj:
            headers["content-range"] = obj["ContentRange"]
        if "ETag" in obj:
            headers["etag"] = obj["ETag"]
        if "LastModified" in obj:
            headers["last-modified"] = obj["LastModified"].strftime("%a, %d %b %Y %H:%M:%S GMT")
        status = 206 if "ContentRange" in obj and range_header else 200
        return StreamingResponse(_chunks(obj["Body"]), status_code=status, headers=headers,
                                 media_type=MEDIA_TYPE)

    async def _size(self, key: str) -> int | str:
        from botocore.exceptions import ClientError

        try:
            head = await self._call("head_object", Bucket=self.bucket, Key=self.key(key))
        except ClientError:
            return "*"
        return head["ContentLength"]

    def close(self) -> None:
        self.client.close()


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(body.read, CHUNK_BYTES):
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            body.close()
