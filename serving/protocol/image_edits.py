"""POST /v1/images/edits: OpenAI's multipart shape, checked against the model's catalog entry.

Shared by the router (which refuses a bad request, image included, before it reaches a GPU)
and the image worker (which speaks the same shape, so it can be called on its own). The form
carries the input as `image` (the openai SDK sends a list as repeated `image[]` parts), an
optional `mask`, and the same fields as a generation; every value but the files is a string.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from serving.config.catalog import ImageOptions, ModelEntry
from serving.errors import OpenAIError, invalid_request, validation_error
from serving.media.images import open_image
from serving.protocol.images import ImageFields, ImageParams, parse_size, resolve_image_request

IMAGE_FIELDS = ("image", "image[]")
FILE_FIELDS = (*IMAGE_FIELDS, "mask", "markup")


class ImageEditFields(ImageFields):
    """The form fields besides the files (multipart sends each value as a string)."""

    safety_identifier: str | None = Field(default=None, max_length=256)
    input_fidelity: Literal["high", "low"] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Field(ge=0, le=3)] | None = None


def edit_fields(form: Any) -> ImageEditFields:
    """The non-file fields of the form; a bad one (or a missing prompt) is a 400 naming it."""
    data = {key: value for key, value in form.multi_items() if key not in FILE_FIELDS}
    try:
        fields = ImageEditFields.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    if fields.stream:
        raise invalid_request("Streamed edits are not supported; leave 'stream' unset.",
                              param="stream", code="unsupported_value")
    return fields


def edit_image_part(form: Any, entry: ModelEntry) -> Any:
    """The one uploaded input image; a 400 naming `image` (or `mask`) otherwise."""
    for field in ("mask", "markup"):
        if form.get(field) is not None:
            raise invalid_request(
                f"'{field}' is not supported: `{entry.id}` edits the whole image from the "
                "prompt (no model here inpaints).", param=field, code="unsupported_parameter")
    parts = [value for key, value in form.multi_items() if key in IMAGE_FIELDS]
    if not parts:
        raise invalid_request("Missing required parameter: 'image'.", param="image",
                              code="missing_required_parameter")
    if len(parts) > 1:
        raise invalid_request(f"`{entry.id}` edits one image per request; {len(parts)} were "
                              "sent.", param="image", code="too_many_images")
    if not hasattr(parts[0], "read"):
        raise invalid_request("'image' must be a file (a PNG, JPEG, WebP or GIF upload).",
                              param="image", code="invalid_value")
    return parts[0]


def decode_edit_image(data: bytes, max_bytes: int, max_pixels: int) -> Any:
    """The input image as RGB, or a 400 naming `image`: empty, too big, corrupt or of a format
    Pillow does not read."""
    if len(data) > max_bytes:
        raise invalid_request(f"The image is {len(data)} bytes, larger than the {max_bytes} "
                              "allowed.", param="image", code="image_too_large")
    try:
        return open_image(data, max_pixels).convert("RGB")
    except ValueError as e:
        raise invalid_request(str(e), param="image", code="invalid_image") from None


def nearest_size(width: int, height: int, options: ImageOptions) -> str:
    """The size the model takes that is nearest the input's: the closest aspect ratio, then
    the closest area; the catalog default among equals."""
    def distance(size: str) -> tuple[float, float, bool]:
        w, h = parse_size(size)
        return (round(abs(math.log((w / h) / (width / height))), 6),
                abs(math.log((w * h) / (width * height))), size != options.default_size)

    return min(options.sizes, key=distance)


def resolve_edit_request(fields: ImageEditFields, image: Any, entry: ModelEntry) -> ImageParams:
    """The pipeline parameters for an edit of `image` (its size sets the default output
    size), or a 400 naming the first bad field. The image is not resized here."""
    if "edits" not in entry.capabilities:
        raise OpenAIError(400, f"The model `{entry.id}` does not edit images.", param="model",
                          code="model_not_supported")
    options = entry.image
    assert options is not None
    size = fields.size if fields.size not in (None, "auto") else nearest_size(*image.size,
                                                                              options)
    params = resolve_image_request(fields.model_copy(update={"size": size}), options)
    return replace(params, image=image)
