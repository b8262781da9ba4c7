"""Images through the real stack: router + diffusers FluxPipeline worker (tiny, on CPU)."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.conftest import CHAT_MODEL, validate_openai

pytestmark = pytest.mark.e2e

MODEL = "flux-tiny"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize("size", ["128x128", "256x256"])
def test_png_at_the_requested_size(client, size):
    r = client.images.generate(model=MODEL, prompt="a red fox in the snow", size=size)
    (item,) = r.data
    assert decode(item.b64_json).size == tuple(map(int, size.split("x")))
    assert r.usage.input_tokens > 0


def test_response_matches_openai_schema_and_default_size(http):
    r = http.post("/v1/images/generations", json={"model": MODEL, "prompt": "a lighthouse"})
    assert r.status_code == 200, r.text
    body = r.json()
    validate_openai(body, "ImagesResponse")
    assert decode(body["data"][0]["b64_json"]).size == (128, 128)
    assert body["usage"]["images"] == 1
    assert body["usage"]["cache_read_input_tokens"] == 0


def test_same_seed_same_bytes_and_n2_differs(client):
    kwargs = dict(model=MODEL, prompt="a blue bicycle", extra_body={"seed": 42})
    a = client.images.generate(**kwargs).data[0].b64_json
    b = client.images.generate(**kwargs).data[0].b64_json
    assert a == b
    two = client.images.generate(n=2, **kwargs).data
    assert len(two) == 2 and two[0].b64_json != two[1].b64_json


def test_steps_and_guidance_extensions(client):
    """The steps reach the engine: the same seed with other steps draws another picture.
    (flux-tiny has no guidance embedding, so guidance_scale is only checked to be taken.)"""

    def draw(steps: int) -> str:
        return client.images.generate(model=MODEL, prompt="x", extra_body={
            "num_inference_steps": steps, "guidance_scale": 1.5, "seed": 3}).data[0].b64_json

    two = draw(2)
    assert draw(2) == two
    assert draw(4) != two


def test_model_may_be_omitted(http):
    """The first image model serves a request that names none: the same picture as asking
    for it by name."""
    body = {"prompt": "a cat", "seed": 5}
    r = http.post("/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    named = http.post("/v1/images/generations", json={"model": MODEL, **body})
    assert r.json()["data"][0]["b64_json"] == named.json()["data"][0]["b64_json"]


def test_concurrent_requests_are_batched(aclient_factory):
    import asyncio

    async def main():
        client = aclient_factory()
        try:
            return await asyncio.gather(*(
                client.images.generate(model=MODEL, prompt=f"tree {i}",
                                       extra_body={"seed": i}) for i in range(6)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert all(len(r.data) == 1 for r in results)
    assert len({r.data[0].b64_json for r in results}) == 6


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": "x", "size": "100x100"}, "size"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 500}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": 50.0}, "guidance_scale"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "output_format": "jpeg"}, "output_format"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_image_requests(http, body, param):
    r = http.post("/v1/images/generations", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    validate_openai(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param


def test_unknown_or_wrong_kind_of_model(http, client):
    r = http.post("/v1/images/generations", json={"model": "dall-e-9", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/v1/images/generations", json={"model": CHAT_MODEL, "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model=MODEL, prompt="x", response_format="url")
    # And image models are not chat models.
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_media_models_are_in_the_catalog_not_in_models(http):
    ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert MODEL not in ids and "wan-tiny" not in ids
    catalog = {m["id"]: m for m in http.get("/v1/catalog").json()["data"]}
    image = catalog[MODEL]
    assert image["modality"] == "image"
    assert {"128x128", "256x256"} <= set(image["sizes"])
    assert image["default_size"] == "128x128" and image["max_n"] == 4
    video = catalog["wan-tiny"]
    assert video["modality"] == "video" and "1" in video["seconds"]
