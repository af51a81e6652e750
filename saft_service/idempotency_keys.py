"""Idempotency keys: a request retried with the same ``Idempotency-Key`` gets the first answer again.

The store side, without HTTP (``api/idempotent_route.py`` is the HTTP side). A key belongs to a tenant and names
one request (its endpoint and body fingerprint). Its life:

1. ``claim``: the first request inserts the row in state ``processing`` with a random ``token`` (the primary
   key ``(tenant_id, key)`` makes two racing requests agree on one owner); a retry finds the row and gets
   ``InUse`` (still running) or ``Replay`` (done: the stored answer).
2. ``record_answer``: the owner writes its answer (state ``done``) in the transaction that creates what the
   request creates (the job, the dataset), so the two commit together: a retry after a crash at any point
   finds either nothing created and the key still ``processing`` (3.), or the answer. ``complete`` then stores
   the exact bytes sent; ``release``: the owner gave no answer worth replaying (an error), so the key is
   freed and a retry runs again (a key whose answer is recorded is never freed).
3. A ``processing`` row older than ``stale_after`` (its request died with its process) and an expired row can
   be taken over by the next request (compare-and-set on the token, so only one does).
4. ``purge_expired`` deletes rows past ``expires_at`` (kept ``SAFT_IDEMPOTENCY_TTL`` seconds, at least a day).

Each function but ``record_answer`` opens and commits its own short transaction.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .db import affected_rows
from .tables import IdempotencyKey, utcnow

log = logging.getLogger(__name__)

PROCESSING, DONE = "processing", "done"


@dataclass(frozen=True)
class Claimed:
    """This request owns the key and runs; it finishes with ``complete`` or ``release`` and this token."""

    token: str


@dataclass(frozen=True)
class InUse:
    """Another request with this key is still running."""


@dataclass(frozen=True)
class Replay:
    """The key's request has finished; its answer, for the endpoint and body it was given."""

    endpoint: str
    fingerprint: str
    status: int
    content_type: str
    body: str


Outcome = Claimed | InUse | Replay


def claim(
    factory: sessionmaker[Session],
    *,
    tenant_id: str,
    key: str,
    endpoint: str,
    ttl: timedelta,
    stale_after: timedelta,
    now: datetime | None = None,
) -> Outcome:
    """Take ``key`` for a request of ``tenant_id`` to ``endpoint``, or say who has it."""
    for _ in range(3):  # a row released or purged between our insert and our read: try again
        now = now or utcnow()
        token = secrets.token_hex(16)
        with factory() as session:
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    endpoint=endpoint,
                    token=token,
                    state=PROCESSING,
                    created_at=now,
                    locked_at=now,
                    expires_at=now + ttl,
                )
            )
            try:
                session.commit()
                return Claimed(token)
            except IntegrityError:
                session.rollback()
            row = session.get(IdempotencyKey, (tenant_id, key))
            if row is None:
                continue
            lost = row.state == PROCESSING and row.locked_at < now - stale_after
            if row.expires_at < now or lost:
                # 3. Take it over: the owner's process is gone, or the answer is past its retention.
                taken = affected_rows(
                    session,
                    update(IdempotencyKey)
                    .where(
                        IdempotencyKey.tenant_id == tenant_id,
                        IdempotencyKey.key == key,
                        IdempotencyKey.token == row.token,
                    )
                    .values(
                        endpoint=endpoint,
                        token=token,
                        state=PROCESSING,
                        fingerprint=None,
                        status=None,
                        content_type=None,
                        body=None,
                        created_at=now,
                        locked_at=now,
                        expires_at=now + ttl,
                    )
                )
                session.commit()
                if taken == 1:
                    if lost:
                        log.warning("idempotency key of tenant %s taken over from a lost request", tenant_id)
                    return Claimed(token)
                continue
            if row.state == PROCESSING:
                return InUse()
            return Replay(
                endpoint=row.endpoint,
                fingerprint=row.fingerprint or "",
                status=row.status or 0,
                content_type=row.content_type or "application/json",
                body=row.body or "",
            )
    return InUse()


def complete(
    factory: sessionmaker[Session],
    *,
    tenant_id: str,
    key: str,
    token: str,
    fingerprint: str,
    status: int,
    content_type: str,
    body: str,
) -> bool:
    """Store the owner's answer (the exact bytes sent, over a recorded one); False when the key is no longer
    this owner's (taken over or purged)."""
    with factory() as session:
        stored = record_answer(
            session, tenant_id=tenant_id, key=key, token=token, fingerprint=fingerprint, status=status,
            content_type=content_type, body=body,
        )
        session.commit()
        return stored


def record_answer(
    session: Session,
    *,
    tenant_id: str,
    key: str,
    token: str,
    fingerprint: str,
    status: int,
    content_type: str,
    body: str,
) -> bool:
    """Write the owner's answer in ``session``'s transaction (the caller commits it with what it created);
    False when the key is no longer this owner's."""
    changed = affected_rows(
        session,
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.token == token,
        )
        .values(state=DONE, fingerprint=fingerprint, status=status, content_type=content_type, body=body),
    )
    return changed == 1


def release(factory: sessionmaker[Session], *, tenant_id: str, key: str, token: str) -> None:
    """Free the key (the request failed): a retry with it runs again. A key whose answer was recorded with
    what the request created stays: that answer is the one a retry gets."""
    with factory() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.key == key,
                IdempotencyKey.token == token,
                IdempotencyKey.state == PROCESSING,
            )
        )
        session.commit()


def purge_expired(factory: sessionmaker[Session], now: datetime | None = None) -> int:
    """Delete every key past its retention; returns how many."""
    now = now or utcnow()
    with factory() as session:
        count = affected_rows(session, delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
        session.commit()
    if count:
        log.info("purged %d expired idempotency keys", count)
    return count


def count(factory: sessionmaker[Session], tenant_id: str) -> int:
    """How many keys ``tenant_id`` holds (for tests and operators)."""
    with factory() as session:
        return len(
            session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.tenant_id == tenant_id)).all()
        )
