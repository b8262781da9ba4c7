"""Opening a client's image: Pillow must find a PNG, JPEG, WebP or GIF that decodes completely.

Shared by the router's chat image inputs and by image edits (router and worker), so every path
that takes a client's picture refuses the same files for the same reasons: an unsupported
format, a bitmap larger than allowed (checked from the header, before it is allocated), a
truncated or corrupt file.
"""

from __future__ import annotations

import io

from PIL import Image

# Pillow's format name -> the MIME type of a data URL.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The first frame of `data`, decoded, or ValueError with a message for the client."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.format not in FORMATS:
            raise ValueError(f"Unsupported image format `{image.format}`; use PNG, JPEG, WebP "
                             "or GIF.")
        width, height = image.size
        if width * height > max_pixels:  # checked before the bitmap is allocated
            raise ValueError(f"The image has {width}x{height} pixels, more than {max_pixels}.")
        image.load()  # the first frame, completely: a truncated file fails here
    except ValueError:
        raise
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise ValueError("The image could not be decoded (corrupt or not an image).") from None
    return image
