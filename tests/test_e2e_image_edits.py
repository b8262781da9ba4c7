"""Image edits through the real stack: the CPU default's editor, a tiny random diffusers
FluxKontextPipeline worker beside its generator, called with the openai SDK's `images.edit`."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import validate_openai
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

EDITOR = "flux-kontext-tiny"
EDITS = "/v1/images/edits"


def png(rgb: tuple[int, int, int], size: tuple[int, int] = (128, 128)) -> bytes:
    """A picture with a square of another colour in it, so it is not one flat colour."""
    image = Image.new("RGB", size, rgb)
    image.paste((255 - rgb[0], 255 - rgb[1], 255 - rgb[2]), (8, 8, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE = png((200, 30, 30)), png((30, 30, 200))


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "PNG"
    return image


def edit(client, image: bytes = RED, **kwargs):
    kwargs.setdefault("model", EDITOR)
    kwargs.setdefault("prompt", "make the square green")
    return client.images.edit(image=("in.png", image, "image/png"), **kwargs)


def test_catalog_shows_the_editor_beside_the_generator(http):
    r = http.get("/v1/catalog")
    assert r.status_code == 200, r.text
    by_id = {m["id"]: m for m in r.json()["data"]}
    assert "edits" in by_id[EDITOR]["capabilities"]
    assert "edits" not in by_id["flux-tiny"]["capabilities"]
    assert "/v1/images/edits" in by_id[EDITOR]["endpoints"]
    assert by_id["flux-tiny"]["endpoints"] == ["/v1/images/generations"]


def test_generations_default_to_the_generator(http):
    """A second image model does not change the default image model for generations."""
    r = http.post("/v1/images/generations", json={"prompt": "a lighthouse"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["images"] == 1


def test_two_different_pngs_of_the_asked_size(client):
    r = edit(client, n=2, size="256x256")
    assert len(r.data) == 2
    assert [decode(item.b64_json).size for item in r.data] == [(256, 256)] * 2
    assert r.data[0].b64_json != r.data[1].b64_json
    assert r.usage.input_tokens > 0


def test_the_input_image_reaches_the_pipeline(client):
    """The same image, prompt and seed give the same bytes; another input image (same prompt
    and seed) gives other bytes."""
    seeded = {"extra_body": {"seed": 7}}
    first = edit(client, RED, **seeded).data[0].b64_json
    assert edit(client, RED, **seeded).data[0].b64_json == first
    assert edit(client, BLUE, **seeded).data[0].b64_json != first


def test_response_matches_openai_schema_and_size_follows_the_input(http):
    """Without `size` the output takes the catalog size nearest the input's."""
    for size, expected in [((256, 256), (256, 256)), ((100, 90), (128, 128))]:
        r = http.post(EDITS, data={"model": EDITOR, "prompt": "x"},
                      files={"image": ("in.png", png((10, 200, 10), size), "image/png")})
        assert r.status_code == 200, r.text
        validate_openai(r.json(), "ImagesResponse")
        assert decode(r.json()["data"][0]["b64_json"]).size == expected
        assert r.json()["usage"]["images"] == 1


def test_model_may_be_omitted(http):
    """The first model that edits serves a request that names none (not the first image
    model, which only generates)."""
    data = {"prompt": "x", "seed": "5"}
    files = {"image": ("in.png", RED, "image/png")}
    r = http.post(EDITS, data=data, files=files)
    assert r.status_code == 200, r.text
    named = http.post(EDITS, data={"model": EDITOR, **data}, files=files)
    assert r.json()["data"][0]["b64_json"] == named.json()["data"][0]["b64_json"]


def test_several_images_are_a_400_for_an_editor_that_takes_one(client):
    """The SDK sends a list as `image[]` parts; FLUX.1 Kontext edits one image."""
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(model=EDITOR, prompt="x",
                           image=[("a.png", RED, "image/png"), ("b.png", BLUE, "image/png")])
    assert e.value.body["param"] == "image"
    assert e.value.body["code"] == "too_many_images"


def test_url_format_and_mask_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as e:
        edit(client, response_format="url")
    assert e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        edit(client, mask=("mask.png", RED, "image/png"))
    assert e.value.body["param"] == "mask"
    assert e.value.body["code"] == "unsupported_parameter"


def multipart(fields: dict, boundary: str) -> bytes:
    """A multipart/form-data body: a str value is a text field, a (name, bytes, type) tuple
    a file."""
    out = b""
    for key, value in fields.items():
        out += f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"".encode()
        if isinstance(value, tuple):
            filename, content, mime = value
            out += f"; filename=\"{filename}\"\r\nContent-Type: {mime}".encode()
        else:
            content = value.encode()
        out += b"\r\n\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _huge_png() -> bytes:
    """Few bytes, but more pixels (7000x7000) than `router.images.max_pixels` allows."""
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, format="PNG")
    return buf.getvalue()


def _bmp() -> bytes:
    """A real image in a format edits do not take."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="BMP")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({}, {"image": RED}, "prompt"),
        ({"prompt": "   "}, {"image": RED}, "prompt"),
        ({"prompt": "x"}, {}, "image"),
        ({"prompt": "x", "image": "not a file"}, {}, "image"),
        ({"prompt": "x"}, {"image": b"not an image at all"}, "image"),
        ({"prompt": "x"}, {"image": RED[: len(RED) // 2]}, "image"),
        ({"prompt": "x"}, {"image": "bmp"}, "image"),
        ({"prompt": "x"}, {"image": "huge"}, "image"),
        ({"prompt": "x"}, {"image": RED, "mask": RED}, "mask"),
        ({"prompt": "x", "response_format": "url"}, {"image": RED}, "response_format"),
        ({"prompt": "x", "size": "100x100"}, {"image": RED}, "size"),
        ({"prompt": "x", "n": "0"}, {"image": RED}, "n"),
        ({"prompt": "x", "n": "5"}, {"image": RED}, "n"),
        ({"prompt": "x", "seed": "-1"}, {"image": RED}, "seed"),
        ({"prompt": "x", "num_inference_steps": "500"}, {"image": RED}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": "50"}, {"image": RED}, "guidance_scale"),
        ({"prompt": "x", "stream": "true"}, {"image": RED}, "stream"),
        ({"prompt": "x", "background": "transparent"}, {"image": RED}, "background"),
        ({"prompt": "x", "colour": "red"}, {"image": RED}, "colour"),
        ({"prompt": "x", "model": "flux-tiny"}, {"image": RED}, "model"),
    ],
)
def test_bad_edits(http, data, files, param):
    """Each a 400 naming its field; the form is built by hand, so a form without a file and
    a text field named `image` can be sent."""
    fields: dict = {"model": EDITOR, **data}
    made = {"huge": _huge_png, "bmp": _bmp}
    fields.update({k: ("f.png", made[v]() if isinstance(v, str) else v, "image/png")
                   for k, v in files.items()})
    r = http.post(EDITS, content=multipart(fields, "b0undary"),
                  headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert r.status_code == 400, r.text
    validate_openai(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.text


def test_a_generation_only_model_names_the_editors(http):
    r = http.post(EDITS, data={"model": "flux-tiny", "prompt": "x"},
                  files={"image": ("in.png", RED, "image/png")})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "model_not_supported"
    assert EDITOR in r.json()["error"]["message"]


def test_json_body_and_variations(http):
    r = http.post(EDITS, json={"model": EDITOR, "prompt": "x", "image": "data:..."})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    r = http.post("/v1/images/variations", files={"image": ("in.png", RED, "image/png")})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_endpoint"
    assert EDITS in r.json()["error"]["message"]


def _batch_counts(stack) -> dict[str, float]:
    text = httpx.get(stack.worker_url("edits") + "/metrics", timeout=30).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("kind") == "edit" and sample.name.endswith("_total")}


def test_concurrent_edits_are_batched(stack, aclient_factory):
    """Six edits at once, of different input sizes, come out of fewer pipeline calls."""
    before = _batch_counts(stack)

    async def main():
        client = aclient_factory()
        try:
            return await asyncio.gather(*(
                client.images.edit(model=EDITOR, prompt=f"tree {i}", size="128x128",
                                   image=("in.png", png((40 * i, 90, 90), (128 + 16 * i, 128)),
                                          "image/png"),
                                   extra_body={"seed": i, "num_inference_steps": 8})
                for i in range(6)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len({r.data[0].b64_json for r in results}) == 6
    after = _batch_counts(stack)
    calls = after["serving_image_pipeline_calls_total"] - \
        before.get("serving_image_pipeline_calls_total", 0)
    requests = after["serving_image_batched_requests_total"] - \
        before.get("serving_image_batched_requests_total", 0)
    assert requests == 6
    assert 1 <= calls < 6


def test_the_ledger_counts_edited_images(stack, client):
    """Under the admin key, which only the metering tests also use (they count from their
    own start, and never this endpoint)."""
    since = time.time()
    admin = openai.OpenAI(base_url=stack.v1, api_key=stack.admin_key, max_retries=0,
                          timeout=120)
    made = len(edit(admin, n=3).data) + len(edit(admin).data)
    assert made == 4

    def recorded():
        r = httpx.get(stack.base_url + "/v1/usage", params={"since": str(since),
                                                             "by": "key,endpoint"},
                      headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=30)
        assert r.status_code == 200, r.text
        rows = [row for row in r.json()["data"]
                if row["endpoint"] == EDITS and row["key"] == "admin-1"]
        return rows if rows and rows[0]["requests"] == 2 else None

    (row,) = wait_until(recorded, "two edits in the ledger")
    assert row["images"] == 4
    assert row["prompt_tokens"] > 0
