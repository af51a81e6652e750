"""Webhooks: verify a delivery's signature (``verify``) and manage endpoints (``client.webhooks``).

The service signs per the Standard Webhooks specification: ``webhook-signature`` holds one or more
space-separated ``v1,<base64 HMAC-SHA256>`` of ``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed with the
base64-decoded part of the secret after ``whsec_``. In a receiver::

    from saft_client import webhooks
    event = webhooks.verify(request_body_bytes, request_headers, secret)   # raises WebhookVerificationError
    if already_handled(request_headers["webhook-id"]): return 200          # the same id on every retry
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._base import id_of
from .errors import SaftClientError
from .models import Webhook, WebhookCreated, WebhookDelivery, WebhookSecret

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .client import Client

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds a timestamp may be away from now (replay protection)


class WebhookVerificationError(SaftClientError):
    """A webhook request whose signature, timestamp or headers do not verify: answer 4xx and drop it."""


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """The parsed body of a webhook request if it is signed with ``secret`` and its ``webhook-timestamp`` is
    within ``tolerance`` seconds of ``now`` (default: the clock); ``WebhookVerificationError`` otherwise.
    Pass the body exactly as received (bytes), and the request's headers (any case)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, stamp, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
    except KeyError as e:
        raise WebhookVerificationError(f"missing header {e.args[0]}") from e
    try:
        timestamp = int(stamp)
    except ValueError as e:
        raise WebhookVerificationError("webhook-timestamp is not a number") from e
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or in the future (a replay?)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as e:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from e
    body = payload.encode() if isinstance(payload, str) else payload
    expected = hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + body, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(given, expected):
            event: dict[str, Any] = json.loads(body)
            return event
    raise WebhookVerificationError("no signature matches the secret")


class Webhooks:
    """``client.webhooks``: register endpoints (the secret comes back once), list, delete, rotate the secret,
    read the deliveries and their attempts."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        """Register ``url`` for ``events`` (default: every event). Keep ``.secret``: it is shown only now."""
        body: dict[str, Any] = {"url": url, **({"events": events} if events is not None else {})}
        return WebhookCreated.model_validate(self._c.request("POST", "/v1/webhooks", json=body).json())

    def get(self, webhook: str | Webhook) -> Webhook:
        return self._c._get(f"/v1/webhooks/{id_of(webhook)}", Webhook)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[Webhook]:
        return self._c._pages("/v1/webhooks", Webhook, {"limit": page_size}, limit)

    def delete(self, webhook: str | Webhook) -> None:
        self._c.request("DELETE", f"/v1/webhooks/{id_of(webhook)}")

    def rotate_secret(self, webhook: str | Webhook) -> WebhookSecret:
        response = self._c.request("POST", f"/v1/webhooks/{id_of(webhook)}/rotate-secret")
        return WebhookSecret.model_validate(response.json())

    def deliveries(
        self, webhook: str | Webhook, *, limit: int | None = None, page_size: int = 50
    ) -> Iterator[WebhookDelivery]:
        """Deliveries to the endpoint, newest first, each with its attempts."""
        return self._c._pages(
            f"/v1/webhooks/{id_of(webhook)}/deliveries", WebhookDelivery, {"limit": page_size}, limit
        )


class AsyncWebhooks:
    """``AsyncClient.webhooks``: the same as ``Webhooks``, awaited."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        body: dict[str, Any] = {"url": url, **({"events": events} if events is not None else {})}
        return WebhookCreated.model_validate((await self._c.request("POST", "/v1/webhooks", json=body)).json())

    async def get(self, webhook: str | Webhook) -> Webhook:
        return await self._c._get(f"/v1/webhooks/{id_of(webhook)}", Webhook)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> AsyncIterator[Webhook]:
        return self._c._pages("/v1/webhooks", Webhook, {"limit": page_size}, limit)

    async def delete(self, webhook: str | Webhook) -> None:
        await self._c.request("DELETE", f"/v1/webhooks/{id_of(webhook)}")

    async def rotate_secret(self, webhook: str | Webhook) -> WebhookSecret:
        response = await self._c.request("POST", f"/v1/webhooks/{id_of(webhook)}/rotate-secret")
        return WebhookSecret.model_validate(response.json())

    def deliveries(
        self, webhook: str | Webhook, *, limit: int | None = None, page_size: int = 50
    ) -> AsyncIterator[WebhookDelivery]:
        return self._c._pages(
            f"/v1/webhooks/{id_of(webhook)}/deliveries", WebhookDelivery, {"limit": page_size}, limit
        )
