"""Every request's id and metrics: one ASGI middleware, the outermost of ours.

- **Request id**: ``X-Request-ID`` from the request when it is sane (1-128 characters of letters, digits and
  ``._:/+=@-``), else a new one; it is answered in the ``X-Request-ID`` header of every response, in the
  ``request_id`` of problem documents (``problems.problem_response``) and in the log lines written for the
  request (``saft_service.logs``).
- **Metrics**: the request's duration by method, route template and status (the template, ``/v1/jobs/{job_id}``,
  never the raw path, so the label's values are bounded by the routes), and the body bytes the upload routes
  receive.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saft_service.logs import start_context
from saft_service.metrics import HTTP_REQUEST_SECONDS, UPLOAD_BYTES

REQUEST_ID_HEADER = "X-Request-ID"
SCOPE_KEY = "saft.request_id"
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # the ones a route may serve
UNMATCHED = "unmatched"
UPLOAD_ROUTES = ("/v1/datasets", "/v1/uploads")


def request_id_of(scope: Scope) -> str | None:
    """The id given to the request of ``scope`` (None before this middleware ran)."""
    return scope.get(SCOPE_KEY)


def route_template(scope: Scope) -> str:
    """The template of the route that answered (or would answer) ``scope``'s request; ``unmatched`` for none."""
    route = scope.get("route")
    if route is None:  # answered before routing (a refused key or length): find the route it was meant for
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            if candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestObservation:
    """ASGI middleware: the request id (header, scope, log context) and the request's metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = given if given and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        scope[SCOPE_KEY] = request_id
        # Not reset when the request ends: each request is a task of its own, and the handler of unexpected
        # errors runs outside this middleware, in the same task, and logs with the id.
        start_context(request_id=request_id)
        status = 500  # an exception that escapes is answered 500 by the framework, outside this middleware
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:  # problem documents set it themselves
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, counting_receive, send_with_id)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            HTTP_REQUEST_SECONDS.labels(method, route, str(status)).observe(time.perf_counter() - started)
            if received and route.startswith(UPLOAD_ROUTES):
                UPLOAD_BYTES.labels(route).inc(received)
