"""Resolve the images of a chat request before it reaches vLLM.

Every `image_url` a client sends becomes a checked `data:` URL here: data URLs are decoded,
http(s) URLs fetched under the guard in `image_fetch`, and the bytes opened with Pillow, which
must find a PNG, JPEG, WebP or GIF that decodes completely. vLLM then never fetches a URL (its
own fetcher knows nothing of the router's network rules) and never sees a file that fails to
decode, which it would answer with a 500-class error rather than a client's 400. An animated
GIF is reduced to its first frame, re-encoded as PNG. Limits (images per request, bytes per
image, pixels per image) come from `router.images`; each refusal is a 400 whose `param` names the
content part, e.g. `messages[0].content[1]`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from serving.config.deployment import ImageInputs
from serving.errors import invalid_request
from serving.media.images import FORMATS, open_image
from serving.router.text.common import input_estimate, token_budget
from serving.router.text.image_fetch import FetchError, fetch_image
from serving.upstream.served import Served

if TYPE_CHECKING:
    from serving.router.call_worker import WorkerCall


@dataclass
class ImageRef:
    """One image URL of a request: where it sits (for errors) and the dict that holds it."""

    param: str  # e.g. "messages[0].content[1]"
    holder: dict[str, Any]  # the dict whose `key` is the URL; rewritten in place
    key: str

    @property
    def url(self) -> str:
        return self.holder[self.key]


def _decode_data_url(url: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise ValueError("The image data URL is malformed.")
    if not header.endswith(";base64"):
        raise ValueError("Image data URLs must be base64-encoded.")
    payload = payload.strip()
    if len(payload) // 4 * 3 > max_bytes + 2:  # refused before decoding
        raise ValueError(f"The image is larger than {max_bytes} bytes.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("The image data URL is not valid base64.") from None
    if len(data) > max_bytes:
        raise ValueError(f"The image is larger than {max_bytes} bytes.")
    return data


def checked_data_url(data: bytes, max_pixels: int) -> str:
    """A data URL of `data` once Pillow decoded all of it, or ValueError saying why not."""
    image = open_image(data, max_pixels)
    mime = FORMATS[image.format or ""]
    if image.format == "GIF":
        first = io.BytesIO()
        image.convert("RGBA" if "transparency" in image.info else "RGB").save(first, "PNG")
        data, mime = first.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


async def _resolve_one(ref: ImageRef, limits: ImageInputs) -> None:
    url = ref.url
    try:
        if url.startswith("data:"):
            data = _decode_data_url(url, limits.max_image_bytes)
        else:
            data = await fetch_image(url, limits)
        ref.holder[ref.key] = await asyncio.to_thread(checked_data_url, data, limits.max_pixels)
    except FetchError as e:
        raise invalid_request(str(e), param=ref.param, code="invalid_image_url") from None
    except ValueError as e:
        raise invalid_request(str(e), param=ref.param, code="invalid_image") from None


async def resolve_images(refs: Sequence[ImageRef], limits: ImageInputs) -> None:
    """Rewrite every image URL in `refs` into a checked data URL, or raise the client's 400."""
    if len(refs) > limits.max_images_per_request:
        raise invalid_request(
            f"At most {limits.max_images_per_request} images are accepted per request.",
            param=refs[limits.max_images_per_request].param, code="too_many_images")
    # One after another, in order: the first bad part is the one reported, and a request
    # cannot make the router hold more than one fetch at a time.
    for ref in refs:
        await _resolve_one(ref, limits)


async def admit_then_resolve(request: Request, call: WorkerCall, served: Served,
                             images: Sequence[ImageRef], limits: ImageInputs,
                             body: dict[str, Any] | None) -> int:
    """Admit the request against its key's limits, then resolve its images, and return the
    prompt's estimate. The order matters: a key over its limit costs the router no fetch or
    decode. `body` holds the answer's token cap (`max_tokens`...); None reserves one token
    (a count, which generates nothing)."""
    estimate = await input_estimate(request, [ref.url for ref in images])
    await call.admit(served, 1 if body is None else token_budget(estimate, served, body))
    # vLLM gets checked data URLs only: it never fetches a client's URL itself.
    await resolve_images(images, limits)
    return estimate


def chat_image_refs(messages: list[dict[str, Any]]) -> list[ImageRef]:
    """The image parts of chat `messages` (as dumped for vLLM), in order."""
    refs = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url":
                refs.append(ImageRef(f"messages[{i}].content[{j}]", part["image_url"], "url"))
    return refs


def responses_image_refs(items: Any) -> list[ImageRef]:
    """The `input_image` parts of a Responses `input` (as dumped for vLLM), in order."""
    refs = []
    for i, item in enumerate(items if isinstance(items, list) else ()):
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "input_image" \
                    and isinstance(part.get("image_url"), str):
                refs.append(ImageRef(f"input[{i}].content[{j}]", part, "image_url"))
    return refs


def messages_image_refs(messages: list[dict[str, Any]]) -> list[ImageRef]:
    """The image blocks of Anthropic `messages` (as dumped for vLLM), in order, tool results'
    included. Each source becomes `{"type": "url", "url": ...}` (a base64 source as a data
    URL), which vLLM takes as it is; resolving then makes every one a checked data URL."""
    refs = []
    for i, message in enumerate(messages):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else ()):
            inner = block.get("content") if block.get("type") == "tool_result" else None
            nested = [(f".content[{k}]", b) for k, b in enumerate(inner)] \
                if isinstance(inner, list) else []
            for suffix, image in [("", block), *nested]:
                if image.get("type") != "image":
                    continue
                source = image["source"]
                if source["type"] == "base64":
                    url = f"data:{source['media_type']};base64,{source['data']}"
                    source.clear()
                    source.update(type="url", url=url)
                refs.append(ImageRef(f"messages[{i}].content[{j}]{suffix}", source, "url"))
    return refs
