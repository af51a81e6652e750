"""Errors as RFC 9457 problem details (``application/problem+json``) with a stable ``code``.

    {"type": "urn:saft:problem:dataset_not_found", "title": "Not Found", "status": 404,
     "detail": "no dataset ds_... in this tenant", "instance": "/v1/datasets/ds_...", "code": "dataset_not_found",
     "request_id": "5f0c..."}

Clients branch on ``code`` (also the last part of ``type``); ``detail`` is for people; ``request_id`` is the
request's ``X-Request-ID`` (in the service's logs too). Validation errors add
``errors``: a list of ``{loc, field, msg, type}`` (``field`` as the request names it, ``msg`` in plain words).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from saft_core.errors import SaftError
from saft_service.input_checks import LIMIT_CODES, LimitError, Refused
from saft_service.storage import client_message

from .observability import HTTP_METHODS, request_id_of

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Codes of problems raised by the framework itself (no route chose them).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str
    request_id: str | None = None  # the request's X-Request-ID: quote it when reporting a problem


class ProblemError(StarletteHTTPException):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code
        self.extra = extra


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"urn:saft:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        **extra,
    }
    # The request's id (api/observability.py), in the document and its header: the handler of unexpected
    # errors answers outside the middleware that adds the header to other responses.
    request_id = request_id_of(request.scope)
    if request_id:
        body["request_id"] = request_id
        headers = {**(headers or {}), "X-Request-ID": request_id}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ProblemError):
        return problem_response(
            request, exc.status_code, exc.code, str(exc.detail), headers=exc.headers, **exc.extra
        )
    detail = str(exc.detail)
    if exc.status_code == 413:
        limit = request.scope.get("starlette.max_body_size")
        detail = "the request body is too large" + (f" (limit: {limit} bytes)" if limit else "")
    elif exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # The router answers with the methods of the first route of this path; list those of all of them.
        allowed = ", ".join(allowed_methods(request))
        headers = {**(headers or {}), "Allow": allowed}
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return problem_response(request, exc.status_code, code, detail, headers=headers)



def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on the request's path, sorted: the methods for which the
    router finds a full match (asked through each route's public ``matches``, whatever nests the routes)."""
    return sorted(
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.router.routes)
    )


# Pydantic's wording, said plainly: "Value error, template ..." is the validator's own sentence; "Input should be
# greater than 0" is "must be greater than 0". The field is named by the error's `field`, so none of these repeats it.
_PLAIN_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), plain)
    for pattern, plain in (
        (r"^(?:Value error|Assertion failed), ", ""),
        (r"^Field required$", "is required"),
        (r"^Extra inputs are not permitted$", "is not a field of this request"),
        (r"^Input should be a valid integer, (?:got a number with a fractional part|unable to parse .*)$",
         "must be a whole number"),
        (r"^Input should be a valid number, unable to parse .*$", "must be a number"),
        (r"^Input tag (.+) found using .+ does not match any of the expected tags: (.+)$", r"must be one of \2, not \1"),
        (r"^Unable to extract tag using discriminator .+$", "is required"),
        (r" after validation\b", ""),
        (r"^(?:Input|Value|String|List|Dictionary|Tuple|Set|Object|Decimal|Data) should\b", "must"),
        (r"^JSON decode error$", "is not valid JSON"),
    )
)
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def plain_message(msg: str) -> str:
    """A validation message in plain words (see ``_PLAIN_MESSAGES``)."""
    for pattern, plain in _PLAIN_MESSAGES:
        msg = pattern.sub(plain, msg)
    return msg


def field_path(loc: Sequence[Any], body: Any = None) -> str:
    """The field an error is about, as the request names it: ``method.ratio`` for pydantic's
    ``("body", "method", "saft", "ratio")``. The request location goes, and so does a union member's tag (a part
    that is not a key of the body there and is not the last one: a missing field is named by the last part)."""
    parts = list(loc)
    node: Any = body if parts[:1] == ["body"] else None  # JSON: a dict, a list, a value
    if parts[:1] and parts[0] in _LOCATIONS:
        parts = parts[1:]
    out: list[str] = []
    for i, part in enumerate(parts):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif isinstance(node, dict) and i < len(parts) - 1:
            continue  # a union member's tag, not a field
        else:
            node = None
        out.append(str(part))
    return ".".join(out)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with ``errors``: each with pydantic's ``loc`` and ``type``, the ``field`` it is about as the request
    names it (``method.ratio``) and ``msg`` in plain words; ``detail`` says the first as ``field: msg``."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        about = loc
        if str(e.get("type", "")).startswith("union_tag_"):  # about the tag field itself: method.type
            about = [*loc, str(e.get("ctx", {}).get("discriminator", "")).strip("'")]
        errors.append({
            "loc": loc, "field": field_path(about, exc.body), "msg": plain_message(str(e.get("msg", ""))),
            "type": str(e.get("type", "")),
        })
    first = errors[0] if errors else {"field": "", "msg": "invalid request"}
    detail = f"{first['field'] or 'request'}: {first['msg']}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
    # A value refused by one of the service's limits keeps the code that names the limit.
    code = first.get("type") if first.get("type") in LIMIT_CODES else "validation_error"
    return problem_response(request, 422, str(code), detail, errors=errors)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return problem_response(request, exc.status, exc.code, exc.message, **exc.extra)


async def _limit_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LimitError)
    return problem_response(request, exc.status, exc.code, exc.message)


async def _saft_error(request: Request, exc: Exception) -> JSONResponse:
    """The core refused (classify's model or checkpoint). No server path or bytes of a file reach the client:
    paths are made relative or redacted, and a model that failed to load says only that."""
    assert isinstance(exc, SaftError)
    status = 503 if exc.code == "model_unavailable" else 422
    if exc.code == "model_unavailable" and exc.message.startswith("cannot load model"):
        log.error("model failed to load on %s: %s", request.url.path, exc.message)
        detail = "cannot load the model: its weights are not a checkpoint of this architecture or are damaged"
    else:
        detail = client_message(exc.message, request.app.state.settings)
    return problem_response(request, status, exc.code, detail)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database is unreachable or busy (an outage, a failover, a full pool, a lock): 503, retry soon."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    retry_after = getattr(request.app.state.settings, "retry_after_seconds", 5)
    if isinstance(exc, PoolTimeout):
        # The database answers, but every pooled connection stayed checked out for SAFT_DB_POOL_TIMEOUT
        # seconds: a burst larger than SAFT_DB_POOL_SIZE + SAFT_DB_MAX_OVERFLOW, or requests stuck on a lock.
        code, detail = "database_busy", "the service has no free database connection right now; try again shortly"
    else:
        code, detail = "database_unavailable", "the database is unavailable; try again shortly"
    return problem_response(request, 503, code, detail, headers={"Retry-After": str(retry_after)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        request, 500, "internal_error", "an unexpected error occurred; it has been logged"
    )


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SaftError, _saft_error)
    for database_error in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(LimitError, _limit_error)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(Exception, _unexpected)


def problem_doc(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}}


# Shared OpenAPI documentation of error answers.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {401: problem_doc("Missing or invalid API key.")}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("No such resource in this tenant.")}
INVALID: dict[int | str, dict[str, Any]] = {422: problem_doc("The request is invalid; `errors` says where.")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: problem_doc("The resource is not in a state that allows this.")
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {413: problem_doc("The upload is over a size or count limit.")}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: problem_doc("The tenant is at a quota (e.g. active jobs); `Retry-After` says when to try again.")
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: problem_doc("A dependency (database, queue, model) is unavailable.")
}


def document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what the API answers: every error is ``application/problem+json``.

    FastAPI documents its own 422 as ``application/json`` with its ``HTTPValidationError`` body; ours is a
    problem document (with ``errors``). Every operation may also answer 422 for a bad parameter, every
    operation that takes a body 413 (over a size limit) or 400 (unparseable), and every ``/v1`` operation 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        problem = {"$ref": "#/components/schemas/Problem"}
        content = {PROBLEM_MEDIA_TYPE: {"schema": problem}}
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status, response in responses.items():
                    # A declared error answer (problem_doc) is a problem document and only that: FastAPI also
                    # lists its model under application/json, which the API never answers with.
                    if status[:1] in "45" and PROBLEM_MEDIA_TYPE in response.get("content", {}):
                        response["content"] = content
                if path.startswith("/v1/"):
                    responses.setdefault("401", {"description": "Missing or invalid API key.", "content": content})
                has_params = bool(operation.get("parameters")) or "requestBody" in operation
                if has_params:
                    said = responses.get("422", {}).get("description")
                    if not said or said == "Validation Error":  # FastAPI's own
                        said = "The request is invalid; `errors` says where."
                    responses["422"] = {"description": said, "content": content}
                if "requestBody" in operation:
                    responses.setdefault(
                        "413", {"description": "The body is over a size or count limit.", "content": content}
                    )
                    responses.setdefault(
                        "400", {"description": "The body cannot be parsed (e.g. multipart without its boundary).",
                                "content": content},
                    )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
