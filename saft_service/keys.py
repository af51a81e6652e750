"""Tenants and API keys. A key is shown once, at creation; the store keeps only its SHA-256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "saft_"
KEY_BYTES = 32
KEY_LENGTH = len(KEY_PREFIX) + len(secrets.token_urlsafe(KEY_BYTES))  # 5 + 43


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, *, tenant_name: str) -> tuple[ApiKey, str]:
    """Make a new key for ``tenant_name`` (creating the tenant if needed). Returns the row and the key."""
    name = tenant_name.strip()
    if not name or len(name) > 100:
        raise ValueError("tenant name must be 1 to 100 characters")
    tenant = get_or_create_tenant(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    row = ApiKey(
        tenant_id=tenant.id, prefix=key[: len(KEY_PREFIX) + 6], key_hash=hash_key(key), created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant a key belongs to, or None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return row.tenant if row is not None else None


def tenant_has_keys(session: Session, tenant_name: str) -> bool:
    stmt = (
        select(ApiKey.id).join(Tenant).where(Tenant.name == tenant_name, ApiKey.revoked_at.is_(None)).limit(1)
    )
    return session.scalar(stmt) is not None


def list_keys(session: Session, *, tenant_name: str | None = None) -> list[ApiKey]:
    """Every key (active and revoked), oldest first, optionally of one tenant."""
    stmt = select(ApiKey).join(Tenant).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    return list(session.scalars(stmt))


def find_key(session: Session, ref: str) -> ApiKey:
    """The key named by ``ref``: its id (``key_...``), the whole key, or the prefix shown by ``list_keys``.

    Raises ``LookupError`` with a message when no key, or more than one, matches.
    """
    ref = ref.strip().removesuffix("...")  # the prefix as listed ends in "..."
    if ref.startswith(KEY_PREFIX) and len(ref) == KEY_LENGTH:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(ref))))
        shown = "the key given"  # a whole key is never echoed
    elif ref.startswith(KEY_PREFIX):
        rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == ref)))
        shown = repr(ref)
    else:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.id == ref)))
        shown = repr(ref)
    if not rows:
        raise LookupError(f"no API key matches {shown} (give a key id, a whole key, or its prefix as listed)")
    if len(rows) > 1:
        raise LookupError(f"{len(rows)} keys share the prefix {ref!r}; give the key id instead")
    return rows[0]


def revoke_key(session: Session, ref: str) -> tuple[ApiKey, bool]:
    """Revoke the key ``ref`` names (see ``find_key``); it stops working at once. Returns the row and whether
    this call revoked it (False: it already was)."""
    row = find_key(session, ref)
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = utcnow()
    session.flush()
    return row, True
