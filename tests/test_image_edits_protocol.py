"""The edit request's form, image and default size, checked without a worker."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from starlette.datastructures import FormData, UploadFile

from serving.config.catalog import ImageOptions
from serving.errors import OpenAIError
from serving.protocol.image_edits import decode_edit_image, edit_fields, nearest_size

OPTIONS = ImageOptions.model_validate({
    "sizes": ["1024x1024", "1184x880", "880x1184", "1392x752", "752x1392", "512x512"],
    "default_size": "1024x1024", "max_prompt_chars": 100,
    "num_inference_steps": {"default": 4, "min": 1, "max": 50},
    "guidance_scale": {"default": 2.5, "min": 0.0, "max": 10.0}})


@pytest.mark.parametrize(("width", "height", "size"), [
    (1024, 1024, "1024x1024"),  # square: the default among the square sizes of equal ratio
    (400, 400, "512x512"),  # nearer in area
    (1600, 1200, "1184x880"),  # 4:3
    (900, 1600, "752x1392"),  # tall
    (3000, 1000, "1392x752"),  # wider than any: the widest
])
def test_default_size_is_the_nearest_the_model_takes(width, height, size):
    assert nearest_size(width, height, OPTIONS) == size


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size).save(buf, "PNG")
    return buf.getvalue()


def test_decode_gives_rgb_or_a_400_naming_image():
    assert decode_edit_image(_png(), 10**6, 10**6).mode == "RGB"
    for data, max_bytes, max_pixels, code in [(b"junk", 10**6, 10**6, "invalid_image"),
                                              (_png(), 10, 10**6, "image_too_large"),
                                              (_png((20, 20)), 10**6, 399, "invalid_image")]:
        with pytest.raises(OpenAIError) as e:
            decode_edit_image(data, max_bytes, max_pixels)
        assert (e.value.status, e.value.param, e.value.code) == (400, "image", code)


def test_form_fields_are_coerced_and_files_left_out():
    form = FormData([("prompt", "x"), ("n", "2"), ("seed", "9"), ("guidance_scale", "1.5"),
                     ("image[]", UploadFile(io.BytesIO(b""), filename="a.png"))])
    fields = edit_fields(form)
    assert (fields.n, fields.seed, fields.guidance_scale) == (2, 9, 1.5)
    for bad, param in [([("n", "2")], "prompt"), ([("prompt", "x"), ("n", "two")], "n"),
                       ([("prompt", "x"), ("stream", "true")], "stream"),
                       ([("prompt", "x"), ("style", "vivid")], "style")]:
        with pytest.raises(OpenAIError) as e:
            edit_fields(FormData(bad))
        assert e.value.param == param
