"""Image inputs of chat requests, resolved by the router: decoding, limits and the SSRF guard.

A real HTTP server on 127.0.0.1 plays the image host. Loopback is not public, so it is refused
unless the config allows 127.0.0.0/8, as these tests do where they need it.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from serving.config.deployment import ImageInputs
from serving.errors import OpenAIError
from serving.router.text.image_fetch import FetchError, fetch_image
from serving.router.text.image_inputs import (
    chat_image_refs,
    checked_data_url,
    resolve_images,
    responses_image_refs,
)
from tests.support.images import data_url, encoded, serve_images

LOOPBACK = ImageInputs(allow_networks=["127.0.0.0/8"])


PNG = encoded("PNG", (8, 6))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """/png: an image; /big: more bytes than allowed, without a length; /to/...: redirects."""
    with serve_images({"/png": PNG, "/big": PNG + b"\0" * 5000}, unsized={"/big"}) as url:
        yield url


def resolve(urls: list[str], limits: ImageInputs = LOOPBACK) -> list[dict]:
    """Run the router's resolver over one user message holding `urls` after a text part."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                *({"type": "image_url", "image_url": {"url": u, "detail": "low"}}
                  for u in urls)]}]
    asyncio.run(resolve_images(chat_image_refs(messages), limits))
    return messages[0]["content"][1:]


def refused(urls: list[str], limits: ImageInputs = LOOPBACK) -> dict:
    with pytest.raises(OpenAIError) as e:
        resolve(urls, limits)
    assert e.value.status == 400
    return e.value.body()["error"]


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                      ("WEBP", "image/webp")])
def test_data_urls_of_each_format_pass_through_unchanged(fmt: str, mime: str):
    url = data_url(encoded(fmt, (8, 6)), mime)
    [part] = resolve([url])
    assert part["image_url"] == {"url": url, "detail": "low"}


def test_a_gif_becomes_its_first_frame_as_png():
    [part] = resolve([data_url(encoded("GIF", (8, 6), frames=3), "image/gif")])
    header, data = part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG" and image.size == (8, 6)
    assert image.convert("RGB").getpixel((0, 0)) == (200, 40, 40)  # frame 0's colour


@pytest.mark.parametrize("payload,why", [
    (data_url(PNG[: len(PNG) // 2]), "decoded"),  # truncated
    (data_url(b"not an image at all"), "decoded"),
    ("data:image/png;base64,@@@@", "base64"),
    ("data:image/png," + "x" * 10, "base64"),
    (data_url(encoded("BMP", (8, 6)), "image/bmp"), "format"),
])
def test_a_bad_image_is_a_400_naming_the_part(payload: str, why: str):
    error = refused([payload])
    assert error["param"] == "messages[0].content[1]"
    assert why in error["message"] and error["code"] == "invalid_image"


def test_limits_per_request_bytes_and_pixels():
    two = refused([data_url(PNG)] * 2, ImageInputs(max_images_per_request=1))
    assert two["param"] == "messages[0].content[2]" and two["code"] == "too_many_images"
    big = data_url(encoded("PNG", (300, 300)) + b"\0" * 2048)
    assert "larger than" in refused([big], ImageInputs(max_image_bytes=1024))["message"]
    wide = refused([data_url(encoded("PNG", (100, 50)))], ImageInputs(max_pixels=4999))
    assert "100x50" in wide["message"]


def test_an_allowed_url_is_fetched_and_handed_on_as_a_data_url(server: str):
    [part] = resolve([f"{server}/png", f"{server}/to/png"])[1:]
    assert part["image_url"]["url"] == data_url(PNG)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x.png",  # loopback, not allowed by default
    "http://localhost:9/x.png",  # a name that resolves to loopback
    "http://10.0.0.1/x.png", "http://192.168.1.1/x.png", "http://172.16.0.1/x.png",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://100.64.0.1/", "http://0.0.0.0/", "http://[::1]/", "http://[fe80::1]/",
    "http://[::ffff:10.0.0.1]/", "http://224.0.0.1/", "http://240.0.0.1/",
])
def test_private_addresses_are_refused_by_default(url: str):
    error = refused([url], ImageInputs())
    assert error["param"] == "messages[0].content[1]" and error["code"] == "invalid_image_url"
    assert "may not be fetched" in error["message"]


def test_the_allowed_server_is_refused_without_the_config(server: str):
    assert "may not be fetched" in refused([f"{server}/png"], ImageInputs())["message"]


def test_each_redirect_is_checked_again(server: str):
    # The allowed server redirects to an address outside the allowed network.
    error = refused([f"{server}/to/http://169.254.169.254/latest/meta-data/"])
    assert "may not be fetched" in error["message"]
    loop = ImageInputs(allow_networks=["127.0.0.0/8"], max_redirects=1)
    assert "redirected more than 1" in refused([f"{server}/to/to/png"], loop)["message"]


@pytest.mark.parametrize("path,why", [("/missing", "HTTP 404"), ("/big", "larger than")])
def test_fetch_failures_are_400s(server: str, path: str, why: str):
    limits = ImageInputs(allow_networks=["127.0.0.0/8"], max_image_bytes=2048)
    assert len(PNG) < 2048
    assert why in refused([server + path], limits)["message"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png",
                                 "gopher://127.0.0.1/", "http:///x.png", "not a url"])
def test_only_http_https_and_data_urls(url: str):
    with pytest.raises(FetchError):
        asyncio.run(fetch_image(url, LOOPBACK))


def test_responses_input_images_are_found_where_they_are():
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                          {"type": "input_image", "image_url": data_url(PNG)}]}]
    [ref] = responses_image_refs(items)
    assert ref.param == "input[0].content[1]" and ref.holder[ref.key] == data_url(PNG)


def test_checked_data_url_keeps_the_bytes_of_a_still_image():
    assert checked_data_url(PNG, 10**6) == data_url(PNG)
