"""Reading a multipart/form-data upload (transcriptions, image edits) in the router.

The router checks the form, then forwards the body byte for byte to the worker (which parses
it again, so it can be called on its own): the body is read once, capped by the body-size
middleware, and parsed from memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from serving.errors import invalid_request


@dataclass
class Upload:
    raw: bytes  # the body as it came, for the worker
    content_type: str  # with its boundary
    form: FormData  # close it (`await form.close()`) when done


async def read_multipart(request: Request, what: str, file_param: str) -> Upload:
    """The request's multipart body, parsed; a 400 naming `file_param` (the form's file
    field) if it is not multipart or does not parse. `what` names the endpoint in errors."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise invalid_request(f"{what} take multipart/form-data with a '{file_param}' part.",
                              param=file_param, code="invalid_content_type")

    async def replay() -> AsyncIterator[bytes]:
        yield raw

    try:
        form = await MultiPartParser(request.headers, replay()).parse()
    except MultiPartException as e:
        raise invalid_request(f"The multipart body could not be parsed: {e.message}",
                              param=file_param) from None
    return Upload(raw, content_type, form)
