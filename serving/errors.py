"""OpenAI's error envelope, for every error a client can see.

`{"error": {"message", "type", "param", "code"}}` with the right HTTP status and `code` a string
or null. Route code raises `OpenAIError`; the handlers here turn that, FastAPI's validation
errors, Starlette's 404/405 and anything unexpected into the envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("serving.errors")

# OpenAI's `type` for each status it uses.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# Anthropic's `type` for each status it uses (https://docs.anthropic.com/en/api/errors); the
# Messages API (/v1/messages...) answers in Anthropic's envelope, everything else in OpenAI's.
_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_PREFIX = "/v1/messages"


def speaks_anthropic(path: str) -> bool:
    """Whether a request path belongs to Anthropic's Messages API, whose clients (the
    `anthropic` SDKs) read only Anthropic's error envelope."""
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def anthropic_body(error: OpenAIError) -> dict[str, Any]:
    """The same error in Anthropic's envelope `{"type": "error", "error": {"type", "message"}}`;
    the OpenAI `param` a 400 names is kept in the message, Anthropic's envelope has no field."""
    status = error.status
    kind = _ANTHROPIC_TYPE_BY_STATUS.get(
        status, "invalid_request_error" if 400 <= status < 500 else "api_error")
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_response(path: str, error: OpenAIError) -> JSONResponse:
    """`error` in the envelope the API at `path` speaks."""
    if speaks_anthropic(path):
        return JSONResponse(anthropic_body(error), status_code=error.status,
                            headers=error.headers)
    return error.response()


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def param_path(loc: Sequence[str | int]) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content', the way OpenAI names params
    (a query parameter is named as it is, without FastAPI's 'query.')."""
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int) and out.endswith("[]"):
            continue  # a repeated form field (`include[]`) is named as the client sent it
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# pydantic unions report one error per member, tagged with the member's name ('str',
# 'list[...]', a model name) or a validator's function name; those tags are not request fields
# (a form field named like `include[]` is one).
def _is_schema_tag(part: str | int) -> bool:
    return isinstance(part, str) and (
        part[:1].isupper() or ("[" in part and not part.endswith("[]"))
        or part in ("str", "int", "float", "bool", "none") or part.startswith("function-")
    )


def validation_error(errors: Sequence[Any]) -> OpenAIError:
    """pydantic's errors (a JSON body's, a query's or a form's) as one 400 naming the field."""
    # Report the error whose location is the most specific; union members repeat one another.
    err = max(errors, key=lambda e: len([p for p in e["loc"] if not _is_schema_tag(p)]))
    loc = [p for p in err["loc"] if not _is_schema_tag(p)]
    param = param_path(loc) or None
    kind = err["type"]
    if kind == "json_invalid":
        return invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what "
            "was sent was not valid JSON.)",
            code="invalid_json",
        )
    if kind == "extra_forbidden":
        return invalid_request(
            f"Unrecognized request argument supplied: {param}", param=param,
            code="unknown_parameter",
        )
    if kind == "missing":
        if not loc or loc == ["body"]:
            return invalid_request("The request body must be a JSON object.", code="invalid_json")
        return invalid_request(f"Missing required parameter: '{param}'.", param=param,
                               code="missing_required_parameter")
    msg = err["msg"].removeprefix("Value error, ")
    # A check across fields (a model validator) names no single one.
    return invalid_request(f"Invalid value for '{param}': {msg}" if param else msg,
                           param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, OpenAIError):  # raised while FastAPI parsed the body
            return error_response(request.url.path, exc.__cause__)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        error = OpenAIError(exc.status_code, message, headers=getattr(exc, "headers", None))
        return error_response(request.url.path, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = OpenAIError(500, "The server had an error while processing your request.")
        return error_response(request.url.path, error)
