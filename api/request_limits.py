"""ASGI middlewares that refuse a request before the framework reads its body: a declared ``Content-Length``
over its limit (413), a body without a valid API key (401), a JSON body too large or too deep (413, 422); and
one that stops waiting for a body that does not arrive (408).

FastAPI's ``max_body_size`` (set per router in ``main.py``) also counts the bytes of bodies without a length
(chunked), and its 413 goes through our problem handler; for a declared length Starlette answers in plain
text, so this middleware answers first, as ``application/problem+json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saft_service.input_checks import json_depth_exceeds

from .problems import problem_response

log = logging.getLogger(__name__)


class ContentLengthLimit:
    """ASGI middleware: 413 ``request_too_large`` for a ``Content-Length`` over the path's limit."""

    def __init__(self, app: ASGIApp, *, default: int, by_prefix: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.by_prefix = by_prefix

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.by_prefix.items():
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            limit = self.limit_for(scope["path"])
            if declared is not None and declared.isdigit() and int(declared) > limit:
                response = problem_response(
                    Request(scope),
                    413,
                    "request_too_large",
                    f"the request body is {declared} bytes; the limit here is {limit} bytes",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return (length is not None and length != "0") or "transfer-encoding" in headers


class AuthenticateFirst:
    """ASGI middleware: a ``/v1`` request that carries a body answers 401 before a byte of the body is read
    unless its API key is valid, so an unauthenticated client cannot make the API read (or spool to disk) a
    large upload. The route authenticates again through its ``CurrentTenant`` dependency as usual."""

    def __init__(self, app: ASGIApp, *, check: Callable[[str | None], tuple[str, str] | None]) -> None:
        self.app = app
        self.check = check  # header value -> None when valid, else (code, detail); runs in a thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS and scope["path"].startswith("/v1/"):
            headers = Headers(scope=scope)
            if _has_body(headers):
                refused = await anyio.to_thread.run_sync(self.check, headers.get("authorization"))
                if refused is not None:
                    code, detail = refused
                    response = problem_response(
                        Request(scope),
                        401,
                        code,
                        detail,
                        headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class JsonBodyLimit:
    """ASGI middleware: a JSON request body is read (at most ``max_bytes``: 413 beyond) and its nesting depth
    checked (422 ``json_too_deep`` beyond ``max_depth``) before the framework parses it, because Python's JSON
    parser recurses and a deep enough body would otherwise end in a 500."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        content_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if not (content_type == "application/json" or content_type.endswith("+json")):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                response = problem_response(
                    Request(scope),
                    413,
                    "request_too_large",
                    f"the JSON body is over the limit of {self.max_bytes} bytes (SAFT_MAX_JSON_BODY_BYTES)",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")  # JSON is UTF-8 (RFC 8259); the framework would answer anything else 400
        except UnicodeDecodeError:
            response = problem_response(
                Request(scope), 422, "validation_error", "the JSON body is not valid UTF-8"
            )
            await response(scope, receive, send)
            return
        if json_depth_exceeds(body, self.max_depth):
            response = problem_response(
                Request(scope),
                422,
                "json_too_deep",
                f"the JSON body nests deeper than {self.max_depth} levels (SAFT_MAX_JSON_DEPTH)",
            )
            await response(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BodyTimeout:
    """ASGI middleware: a request whose body stops arriving (no bytes for ``seconds``) answers 408
    ``request_timeout`` and its connection closes, instead of holding a connection and a thread forever.

    The wait is bounded between two chunks of the body (a slow but steady upload goes on), and only until the
    last chunk (a stream that waits for the client to go away is not timed). Whatever the code reading the
    body made of the timeout (an error, a 400 of the framework's body parser), the client gets the 408.
    """

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            try:
                with anyio.fail_after(self.seconds):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the answer is ours (below)
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
        if timed_out and not started:
            log.info("%s %s: no body bytes for %.0f s; answered 408", scope["method"], scope["path"], self.seconds)
            response = problem_response(
                Request(scope),
                408,
                "request_timeout",
                f"the request body stopped arriving: no bytes for {self.seconds:g} s (SAFT_REQUEST_BODY_TIMEOUT)",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)


class BodyTimedOut(Exception):
    """Raised to the code that waits for a body chunk that did not come in time."""
