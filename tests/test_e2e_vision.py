"""Images in chat, through the real stack with the openai client: the CPU default's model is
SmolLM2 with a tiny random vision encoder (models/smollm2-135m-instruct.yaml), served by vLLM
on its multimodal path. Its answers about pictures are noise; what is checked is that images
reach the model as counted tokens, from data URLs and from an allowed URL, and that what must
be refused is refused with a 400 naming the part.

The stack allows image URLs on 127.0.0.1 (tests/conftest.py); this file's image server
listens there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import CHAT_MODEL
from tests.support.images import data_url, encoded, serve_images

pytestmark = pytest.mark.e2e

QUESTION = "What is in this picture?"


PNG = encoded("PNG")


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with serve_images({"/red.png": PNG}) as url:
        yield url


def ask(client, *urls: str, text: str = QUESTION, **kwargs):
    parts = [{"type": "text", "text": text},
             *({"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls)]
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": parts}], max_tokens=4,
        temperature=0, **kwargs)


def test_an_image_costs_prompt_tokens(client):
    without = ask(client)
    one = ask(client, data_url(PNG))
    two = ask(client, data_url(PNG), data_url(encoded("PNG", colour=(0, 0, 255))))
    assert one.choices[0].message.content is not None
    per_image = one.usage.prompt_tokens - without.usage.prompt_tokens
    assert per_image > 16  # 16 image embeddings, plus the markers around them
    assert two.usage.prompt_tokens == one.usage.prompt_tokens + per_image


@pytest.mark.parametrize("fmt,mime", [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_jpeg_and_webp_data_urls(client, fmt: str, mime: str):
    assert ask(client, data_url(encoded(fmt), mime)).usage.prompt_tokens == \
        ask(client, data_url(PNG)).usage.prompt_tokens


def test_an_animated_gif_is_its_first_frame(client):
    gif = data_url(encoded("GIF", frames=3), "image/gif")
    assert ask(client, gif).usage.prompt_tokens == ask(client, data_url(PNG)).usage.prompt_tokens


def test_an_image_from_an_allowed_url(client, image_server: str):
    fetched = ask(client, f"{image_server}/red.png")
    assert fetched.usage.prompt_tokens == ask(client, data_url(PNG)).usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as missing:
        ask(client, data_url(PNG), f"{image_server}/nothing.png")
    assert missing.value.body["param"] == "messages[0].content[2]"
    assert "HTTP 404" in missing.value.body["message"]


@pytest.mark.parametrize("url", ["http://10.0.0.1/cat.png", "http://169.254.169.254/latest/",
                                 "http://[::1]/cat.png", "http://192.168.0.1/cat.png"])
def test_a_private_url_is_refused(client, url: str):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, url)
    assert e.value.status_code == 400
    assert (e.value.body["param"], e.value.body["code"]) == ("messages[0].content[1]",
                                                             "invalid_image_url")


def test_corrupt_and_too_many_images_are_400s(client):
    with pytest.raises(openai.BadRequestError) as corrupt:
        ask(client, data_url(PNG[: len(PNG) // 2]))
    assert (corrupt.value.body["param"], corrupt.value.body["code"]) == (
        "messages[0].content[1]", "invalid_image")
    with pytest.raises(openai.BadRequestError) as many:
        ask(client, *[data_url(PNG)] * 9)  # the default allows 8
    assert (many.value.body["param"], many.value.body["code"]) == (
        "messages[0].content[9]", "too_many_images")


def test_a_repeated_image_prompt_reads_the_prompt_cache(client):
    # Long enough to fill whole cache blocks; unique, so no earlier test cached it.
    text = f"{secrets.token_hex(8)} " + "Describe the picture for a reader who cannot see it. " * 20
    first = ask(client, data_url(PNG), text=text)
    again = ask(client, data_url(PNG), text=text)
    other = ask(client, data_url(encoded("PNG", colour=(60, 128, 0))), text=text)
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in (first, again, other)]
    # At most the system prompt's blocks were cached before; the repeat reads the image's too.
    assert cached[1] > cached[0] and cached[1] > again.usage.prompt_tokens // 2
    # vLLM puts the image before the text: another image changes the prefix from there on.
    assert cached[2] < cached[1]


def test_streamed_image_chat_meters_the_image(client):
    stream = ask(client, data_url(PNG), stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert usage[-1].prompt_tokens == ask(client, data_url(PNG)).usage.prompt_tokens


def test_responses_take_images_too(client):
    r = client.responses.create(model=CHAT_MODEL, max_output_tokens=16, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION},
                                     {"type": "input_image", "image_url": data_url(PNG)}]}])
    text_only = client.responses.create(model=CHAT_MODEL, max_output_tokens=16, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert r.usage.input_tokens > text_only.usage.input_tokens


def test_catalog_shows_vision(http):
    entry = next(m for m in http.get("/v1/catalog").json()["data"] if m["id"] == CHAT_MODEL)
    assert "vision" in entry["capabilities"]
