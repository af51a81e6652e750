"""Signed webhooks: a tenant's endpoints are told when its jobs end, per the Standard Webhooks specification.

1. **Rows first.** A job's final transition (``saft_service.jobs``) writes one ``WebhookDelivery`` per subscribed
   endpoint in the same transaction, with the exact JSON body it will send: a job that ended has its deliveries,
   and a transition that rolled back has none. Nothing is sent from the transaction itself.
2. **Senders.** Every worker process runs a ``WebhookSender`` thread. It claims one due delivery at a time with a
   lease (a compare-and-set on ``lease_until``), so two senders never send the same attempt at once, and a sender
   that dies only delays the delivery until its lease runs out.
3. **Signing.** Each attempt carries ``webhook-id`` (the delivery's id, the same on every retry, so a receiver
   can drop a message it already handled), ``webhook-timestamp`` (Unix seconds of the attempt) and
   ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the base64-decoded part of
   the secret after ``whsec_``. After a rotation the previous secret also signs, for a day (space-separated).
4. **Retries.** A 2xx answer delivers. Anything else (another status, a redirect, which is never followed, a
   timeout, a refused address) is an attempt recorded with what happened; the next waits
   ``SAFT_WEBHOOK_RETRY_BASE * 2**(n-1)`` seconds, for ``SAFT_WEBHOOK_RETRY_FOR`` seconds (a day), then the
   delivery is ``failed``.
5. **Addresses.** A URL whose host resolves to a loopback, private, link-local (cloud metadata), shared,
   reserved or multicast address is refused at registration and again before every attempt, after resolving
   the name; the connection then goes to the address that was checked, so a name that changes its answer
   between the check and the connection cannot reach an internal service. ``SAFT_WEBHOOK_ALLOW_PRIVATE`` lifts
   the address rule (a receiver on the operator's own network, tests).

Adding an event type: name it in ``EVENT_TYPES`` and call ``enqueue_job_event`` where it happens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import __version__
from .db import affected_rows, session_scope
from .periodic import Periodic
from .settings import Settings
from .tables import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow

log = logging.getLogger(__name__)

# The events an endpoint can subscribe to. A job's final status ``s`` sends ``job.<s>``.
EVENT_TYPES: tuple[str, ...] = ("job.succeeded", "job.failed", "job.cancelled", "job.warning")

SECRET_PREFIX = "whsec_"
PREVIOUS_SECRET_GRACE = timedelta(days=1)  # how long a rotated-out secret still signs
MAX_URL_CHARS = 2000


# --- secrets and signatures ---------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret: ``whsec_`` + base64 of 32 random bytes (the Standard Webhooks form)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """``v1,<signature>`` of one message: base64 HMAC-SHA256 of ``id.timestamp.body`` under the secret's key."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(endpoint: WebhookEndpoint, msg_id: str, timestamp: int, body: str, now: datetime) -> str:
    """The ``webhook-signature`` value: the current secret's signature, and the previous one's during its grace."""
    sigs = [sign(endpoint.secret, msg_id, timestamp, body)]
    if endpoint.previous_secret and endpoint.previous_until and endpoint.previous_until > now:
        sigs.append(sign(endpoint.previous_secret, msg_id, timestamp, body))
    return " ".join(sigs)


# --- addresses -----------------------------------------------------------------------------------------


class UrlRefused(Exception):
    """A webhook URL the service will not send to; ``code`` is the problem code the API answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a public unicast address (not loopback, private, link-local, shared, reserved,
    unspecified or multicast; an IPv4 address inside IPv6 is judged as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            return address_allowed(inner)
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    """Where a webhook URL points: its parts and the address checked for it."""

    scheme: str
    host: str
    port: int
    path: str  # with the query


def parse_url(url: str) -> Target:
    """The parts of an ``http(s)`` URL with a host and no credentials; ``UrlRefused`` otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused("invalid_webhook_url", f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlRefused("invalid_webhook_url", f"not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("invalid_webhook_url", "the URL must be http:// or https:// with a host name")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("invalid_webhook_url", "the URL must not hold credentials (user:password@)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default, path)


def resolve(target: Target, *, allow_private: bool) -> str:
    """The address to connect to for ``target``: its host resolved now, every address checked (one private
    answer refuses the name: a name with a public and a private address could pick either later)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UrlRefused("webhook_url_unresolvable", f"the host {target.host!r} does not resolve ({e})") from e
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused("webhook_url_unresolvable", f"the host {target.host!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not address_allowed(ipaddress.ip_address(address.split("%", 1)[0])):
                raise UrlRefused(
                    "webhook_url_not_allowed",
                    f"{target.host!r} resolves to {address}, a loopback, private, link-local or otherwise "
                    "non-public address; webhooks go only to public addresses (the operator can allow private "
                    "ones with SAFT_WEBHOOK_ALLOW_PRIVATE)",
                )
    return addresses[0]


def check_url(url: str, settings: Settings) -> None:
    """Validate a URL at registration (its form and where it resolves now); ``UrlRefused`` if it is not allowed."""
    resolve(parse_url(url), allow_private=settings.webhook_allow_private)


# --- writing deliveries --------------------------------------------------------------------------------


def enqueue(
    session: Session, *, tenant_id: str, event_type: str, data: dict[str, Any], job_id: str | None = None
) -> list[WebhookDelivery]:
    """A delivery of ``event_type`` for each of the tenant's endpoints subscribed to it, in the caller's
    transaction. The body is fixed now, so every attempt sends (and signs) the same bytes."""
    assert event_type in EVENT_TYPES, event_type
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)).all()
    now = utcnow()
    body = json.dumps(
        {"type": event_type, "timestamp": now.isoformat(), "data": data}, separators=(",", ":"), sort_keys=True
    )
    rows = []
    for endpoint in endpoints:
        if event_type not in endpoint.events:
            continue
        row = WebhookDelivery(
            endpoint_id=endpoint.id, event_type=event_type, job_id=job_id, payload=body,
            status=WebhookDelivery.PENDING, attempts=0, next_attempt_at=now, created_at=now,
        )
        session.add(row)
        rows.append(row)
    return rows


def enqueue_job_event(
    session: Session, job_id: str, event_type: str, extra: dict[str, Any] | None = None
) -> list[WebhookDelivery]:
    """Deliveries of ``event_type`` about job ``job_id`` (its status and error as written in this transaction)."""
    row = session.execute(
        select(Job.tenant_id, Job.status, Job.dataset_id, Job.error_code, Job.error_message, Job.finished_at)
        .where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return []
    data: dict[str, Any] = {
        "job_id": job_id,
        "status": row.status,
        "dataset_id": row.dataset_id,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        **(extra or {}),
    }
    return enqueue(session, tenant_id=row.tenant_id, event_type=event_type, data=data, job_id=job_id)


# --- sending -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one attempt got: the receiver's status code, or why there was none."""

    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to ``address`` for a URL naming ``host`` (the address checked, not a new lookup)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """The same over TLS: the certificate is checked against the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: str, headers: dict[str, str], settings: Settings) -> Outcome:
    """POST ``body`` to ``url`` once: the host resolved and checked now, the connection made to that address,
    no redirect followed, ``SAFT_WEBHOOK_TIMEOUT`` for the connection and each read, twice that in all."""
    started = time.monotonic()
    outcome = Outcome()
    conn: http.client.HTTPConnection | None = None
    watchdog: threading.Timer | None = None
    try:
        target = parse_url(url)
        address = resolve(target, allow_private=settings.webhook_allow_private)
        cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = cls(target.host, target.port, address, settings.webhook_timeout)
        conn.connect()
        # A receiver that answers a byte at a time never trips the per-read timeout: cut it off in all.
        sock = conn.sock
        watchdog = threading.Timer(2 * settings.webhook_timeout, lambda: _shutdown(sock))
        watchdog.daemon = True
        watchdog.start()
        conn.request("POST", target.path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)  # the body is not used; read a little so the receiver is not cut off mid-write
        outcome.status_code = response.status
        if 300 <= response.status < 400:
            outcome.error = f"redirect to {response.getheader('Location')!r} not followed"
    except UrlRefused as e:
        outcome.error = e.message
    except (OSError, http.client.HTTPException) as e:
        outcome.error = f"{type(e).__name__}: {e}"[:500]
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if conn is not None:
            conn.close()
    outcome.duration_ms = int((time.monotonic() - started) * 1000)
    return outcome


def _shutdown(sock: socket.socket | None) -> None:
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def next_delay(settings: Settings, attempts: int) -> float:
    """Seconds after failed attempt number ``attempts`` (1-based) before the next one."""
    return settings.webhook_retry_base * 2.0 ** min(attempts - 1, 30)


def claim_due(session: Session, settings: Settings, now: datetime) -> tuple[str, str] | None:
    """Lease one due delivery (its id and the lease's token), or None; the caller commits."""
    lease = timedelta(seconds=4 * settings.webhook_timeout + 30)  # longer than a whole attempt
    candidates = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == WebhookDelivery.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(5)
    ).all()
    for delivery_id in candidates:
        token = secrets.token_hex(16)
        claimed = affected_rows(
            session,
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == WebhookDelivery.PENDING,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
            )
            .values(lease_until=now + lease, lease_token=token)
            .execution_options(synchronize_session=False),
        )
        if claimed == 1:
            return delivery_id, token
    return None


def record(
    session: Session, settings: Settings, delivery: WebhookDelivery, token: str, outcome: Outcome, started: datetime
) -> bool:
    """Write an attempt and what comes next (delivered, a retry, or failed), if the lease is still ours."""
    number = delivery.attempts + 1
    now = utcnow()
    values: dict[str, Any] = dict(attempts=number, lease_until=None, lease_token=None)
    if outcome.ok:
        values.update(status=WebhookDelivery.DELIVERED, finished_at=now)
    else:
        retry_at = now + timedelta(seconds=next_delay(settings, number))
        if retry_at > delivery.created_at + timedelta(seconds=settings.webhook_retry_for):
            values.update(status=WebhookDelivery.FAILED, finished_at=now)
        else:
            values.update(next_attempt_at=retry_at)
    written = affected_rows(
        session,
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_token == token)
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    if written != 1:
        return False
    session.add(WebhookAttempt(
        delivery_id=delivery.id, number=number, started_at=started, duration_ms=outcome.duration_ms,
        status_code=outcome.status_code, error=outcome.error,
    ))
    return True


def deliver_one(settings: Settings) -> bool:
    """Claim, send and record one due delivery; False when none is due."""
    with session_scope(settings) as session:
        claim = claim_due(session, settings, utcnow())
    if claim is None:
        return False
    delivery_id, token = claim
    with session_scope(settings) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
        if delivery is None or endpoint is None:  # deleted meanwhile
            return True
        session.expunge_all()
    started = utcnow()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": f"saft-webhooks/{__version__}",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(endpoint, delivery.id, timestamp, delivery.payload, started),
    }
    outcome = post(endpoint.url, delivery.payload, headers, settings)
    with session_scope(settings) as session:
        record(session, settings, delivery, token, outcome, started)
    if not outcome.ok:
        log.info("webhook %s to %s: attempt %d failed (%s)", delivery.id, endpoint.id, delivery.attempts + 1,
                 outcome.error or f"HTTP {outcome.status_code}")
    return True


class WebhookSender:
    """Sends due deliveries every ``webhook_poll_interval`` seconds in a daemon thread until ``stop()``.
    Every worker process runs one; the leases keep them from sending the same attempt."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._thread = Periodic("saft-webhooks", settings.webhook_poll_interval, self._pass)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _pass(self) -> None:
        try:
            while not self._thread.stopping and deliver_one(self.settings):
                pass
        except Exception as e:  # the database is down, most likely: the next pass tries again
            log.warning("webhook pass failed: %s", e)
