"""Refuse a request whose declared ``Content-Length`` is over its limit before reading a byte of it.

FastAPI's ``max_body_size`` (set per router in ``main.py``) also counts the bytes of bodies without a length
(chunked), and its 413 goes through our problem handler; for a declared length Starlette answers in plain
text, so this middleware answers first, as ``application/problem+json``.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import problem_response


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
