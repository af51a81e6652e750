"""``Idempotency-Key`` on the create routes: a retried request gets the first answer and creates nothing new.

A route opts in with ``dependencies=[IDEMPOTENT]`` (which also documents the header in OpenAPI) on a router
built with ``route_class=IdempotentRoute``. The route class wraps the whole route, so it sees the exact answer
(status and body bytes) whatever the route body does:

1. No header: the route runs as usual. A header without valid credentials: the route runs (and answers 401).
2. The key is claimed for the caller's tenant before the body is read (``saft_service.idempotency_keys.claim``):
   - still held by a running request: 409 ``idempotency_key_in_use`` with ``Retry-After``, without reading the
     body (a retried upload is not received twice);
   - finished: the body is read and hashed chunk by chunk as it streams in (nothing is kept), and the stored
     answer is replayed when endpoint and fingerprint match, else 422 ``idempotency_key_reused``;
   - new: the route runs on a request whose body is hashed while the route reads it; a 2xx answer is stored
     with the fingerprint, anything else frees the key so that a retry runs again.
3. A route that creates something (a job, a dataset) takes ``IdempotentAnswer`` and calls it inside the
   transaction that creates it, so the answer is recorded in the same commit: a process that dies after that
   commit (before the answer is sent or stored) leaves a key whose retry gets the first answer, never a second
   job. The exact bytes sent replace the recorded answer once the response is built.

The fingerprint is the SHA-256 of the body bytes; for ``multipart/form-data`` the boundary (random per client
request) is replaced by a fixed token first, so a retry of the same upload matches.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any

import anyio
from fastapi import Depends, Header, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Message

from saft_service import idempotency_keys, keys
from saft_service.db import session_factory
from saft_service.settings import Settings

from .problems import ProblemError, problem_doc

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
RETRY_AFTER_S = 1
PURGE_EVERY_S = 3600.0  # how often one API process deletes expired keys

HEADER_DOC = (
    "Optional. A unique string you choose per logical request (a UUID; 1-255 printable ASCII characters). "
    "A retry with the same key and the same body gets the first answer again (same status and body, with "
    f"`{REPLAYED_HEADER}: true`) and creates nothing new. The same key with a different body or on another "
    "endpoint answers 422 `idempotency_key_reused`; while the first request is still being processed a retry "
    "answers 409 `idempotency_key_in_use` with `Retry-After`. Keys are per tenant and kept for "
    "`SAFT_IDEMPOTENCY_TTL` (at least 24 h); only successful answers are kept, so a failed request can be "
    "retried with the same key."
)
_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")

IDEMPOTENCY_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: problem_doc(
        "`idempotency_key_in_use`: a request with this Idempotency-Key is still being processed."
    ),
}


def idempotency_key_header(
    key: Annotated[
        str | None, Header(alias=HEADER, min_length=1, max_length=MAX_KEY_LENGTH, description=HEADER_DOC)
    ] = None,
) -> str | None:
    """Documents the header; ``IdempotentRoute`` does the work on routes that depend on this."""
    return key


IDEMPOTENT = Depends(idempotency_key_header)

_HELD = "saft.idempotency"  # scope entry: the key this request owns, while its route runs


class HeldKey:
    """The key a running request owns: what ``IdempotentAnswer`` needs to record the answer."""

    def __init__(self, tenant_id: str, key: str, token: str, fingerprint: BodyFingerprint) -> None:
        self.tenant_id, self.key, self.token, self.fingerprint = tenant_id, key, token, fingerprint

    def record(self, session: Session, status: int, answer: BaseModel) -> None:
        """Record ``answer`` in ``session``'s transaction (committed by the caller with what it created)."""
        if not self.fingerprint.complete:  # the body is read before a route runs; if not, keep the old way
            return
        stored = idempotency_keys.record_answer(
            session, tenant_id=self.tenant_id, key=self.key, token=self.token,
            fingerprint=self.fingerprint.hexdigest(), status=status, content_type="application/json",
            body=answer.model_dump_json(),
        )
        if not stored:
            log.warning("idempotency key of tenant %s was taken over before its answer was recorded", self.tenant_id)


def _answer_recorder(request: Request) -> Callable[[Session, int, BaseModel], None]:
    held: HeldKey | None = request.scope.get(_HELD)
    return held.record if held is not None else (lambda session, status, answer: None)


IdempotentAnswer = Annotated[Callable[[Session, int, BaseModel], None], Depends(_answer_recorder)]
"""``record(session, status, answer)``: call it in the transaction that creates what the request creates (a
no-op for a request without ``Idempotency-Key``)."""


class BodyFingerprint:
    """SHA-256 of a request body, fed by wrapping the ASGI ``receive`` (constant memory, one pass)."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        self._sha = hashlib.sha256()
        self._carry = b""
        self.complete = False
        content_type = request.headers.get("content-type", "")
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        self._sep = b"--" + match.group(1).encode("latin-1") if match else None
        # The media type is part of what was asked (the same bytes as JSON or as a form differ).
        self._sha.update(content_type.split(";", 1)[0].strip().lower().encode("latin-1") + b"\n")

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.complete:
            self._feed(message.get("body", b""), final=not message.get("more_body", False))
        return message

    def _feed(self, chunk: bytes, *, final: bool) -> None:
        if self._sep is None:
            self._sha.update(chunk)
        else:
            data, start = self._carry + chunk, 0
            while (at := data.find(self._sep, start)) >= 0:
                self._sha.update(data[start:at] + b"--BOUNDARY")
                start = at + len(self._sep)
            rest = data[start:]
            # A separator cut by the chunk edge starts within the last len(sep) - 1 bytes: keep them back.
            cut = len(rest) if final else max(0, len(rest) - (len(self._sep) - 1))
            self._sha.update(rest[:cut])
            self._carry = rest[cut:]
        self.complete = final

    async def drain(self) -> None:
        """Read (and hash) whatever of the body the route has not read."""
        while not self.complete:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _tenant_id(settings: Settings, authorization: str | None) -> str | None:
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    with session_factory(settings)() as session:
        tenant = keys.authenticate(session, credentials.strip())
        return tenant.id if tenant is not None else None


_last_purge = 0.0


def _purge_now_and_then(settings: Settings) -> None:
    global _last_purge
    if time.monotonic() - _last_purge > PURGE_EVERY_S:
        _last_purge = time.monotonic()
        idempotency_keys.purge_expired(session_factory(settings))


class IdempotentRoute(APIRoute):
    """An APIRoute that honours ``Idempotency-Key`` when the route depends on ``IDEMPOTENT``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not any(d.call is idempotency_key_header for d in self.dependant.dependencies):
            return handler
        methods = ",".join(sorted(self.methods or ()))

        async def idempotent_handler(request: Request) -> Response:
            # The concrete path: a key names one request, so completing another upload with it is a reuse.
            endpoint = f"{methods} {request.url.path}"
            key = request.headers.get(HEADER)
            if key is None:
                return await handler(request)
            if not _VALID_KEY.fullmatch(key):
                raise ProblemError(
                    422,
                    "invalid_idempotency_key",
                    f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters without spaces",
                )
            settings: Settings = request.app.state.settings
            tenant_id = await run_in_threadpool(_tenant_id, settings, request.headers.get("authorization"))
            if tenant_id is None:
                return await handler(request)  # answers 401 as usual
            factory = session_factory(settings)
            await run_in_threadpool(_purge_now_and_then, settings)
            outcome = await run_in_threadpool(
                lambda: idempotency_keys.claim(
                    factory,
                    tenant_id=tenant_id,
                    key=key,
                    endpoint=endpoint,
                    ttl=timedelta(seconds=settings.idempotency_ttl),
                    stale_after=timedelta(seconds=settings.idempotency_stale_after),
                )
            )
            if isinstance(outcome, idempotency_keys.InUse):
                raise ProblemError(
                    409,
                    "idempotency_key_in_use",
                    f"a request with this {HEADER} is still being processed; retry after it has finished",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            fingerprint = BodyFingerprint(request)
            if isinstance(outcome, idempotency_keys.Replay):
                await fingerprint.drain()
                if outcome.endpoint != endpoint or outcome.fingerprint != fingerprint.hexdigest():
                    raise ProblemError(
                        422,
                        "idempotency_key_reused",
                        f"this {HEADER} was used for a different request ({outcome.endpoint}, another body); "
                        "use a new key for a new request",
                    )
                return Response(
                    outcome.body,
                    status_code=outcome.status,
                    media_type=outcome.content_type,
                    headers={REPLAYED_HEADER: "true"},
                )
            return await _run_first(handler, request, fingerprint, factory, tenant_id, key, outcome.token)

        return idempotent_handler


async def _run_first(
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
    request: Request,
    fingerprint: BodyFingerprint,
    factory: Any,
    tenant_id: str,
    key: str,
    token: str,
) -> Response:
    """Run the route for the key's owner; keep a 2xx answer, free the key otherwise."""

    def release() -> None:
        idempotency_keys.release(factory, tenant_id=tenant_id, key=key, token=token)

    request.scope[_HELD] = HeldKey(tenant_id, key, token, fingerprint)
    try:
        response = await handler(Request(request.scope, fingerprint.receive, request._send))
        await fingerprint.drain()
    except BaseException:
        with anyio.CancelScope(shield=True):  # also when the client went away
            await run_in_threadpool(release)
        raise
    body = getattr(response, "body", None)
    if 200 <= response.status_code < 300 and isinstance(body, bytes) and fingerprint.complete:
        content_type = response.headers.get("content-type", "application/json")
        stored = await run_in_threadpool(
            lambda: idempotency_keys.complete(
                factory,
                tenant_id=tenant_id,
                key=key,
                token=token,
                fingerprint=fingerprint.hexdigest(),
                status=response.status_code,
                content_type=content_type,
                body=body.decode("utf-8"),
            )
        )
        if not stored:
            log.warning("idempotency key of tenant %s was taken over before its answer was stored", tenant_id)
    else:
        await run_in_threadpool(release)
    return response
