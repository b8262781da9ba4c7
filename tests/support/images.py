"""Pictures for the image-input tests, and a real HTTP server on 127.0.0.1 that serves them.

`serve_images({"/red.png": data})` answers GET on each path with its bytes, `/to/<target>`
with a 302 to `<target>` (a path, or a whole URL), anything else with a 404. Paths listed in
`unsized` are sent without a Content-Length, so a byte limit must count what arrives.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from PIL import Image

from tests.support.loopback import LoopbackServer, QuietHandler


def encoded(fmt: str, size: tuple[int, int] = (96, 64),
            colour: tuple[int, int, int] = (200, 40, 40), frames: int = 1) -> bytes:
    """A picture in `fmt`; frames after the first change colour (to tell a GIF's first)."""
    images = [Image.new("RGB", size, (colour[0] - 40 * i, *colour[1:])) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, fmt, **({"save_all": True, "append_images": images[1:]}
                                if frames > 1 else {}))
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@contextmanager
def serve_images(files: dict[str, bytes], unsized: Collection[str] = (),
                 seen: list[str] | None = None) -> Iterator[str]:
    """The server's base URL, e.g. http://127.0.0.1:PORT, while the block runs; every path
    asked for is appended to `seen`."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if seen is not None:
                seen.append(self.path)
            if self.path.startswith("/to/"):
                target = self.path.removeprefix("/to/")
                self.send_response(302)
                self.send_header("Location", target if "://" in target else "/" + target)
                self.end_headers()
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if self.path not in unsized:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = LoopbackServer(Handler)
    try:
        yield server.url
    finally:
        server.close()
