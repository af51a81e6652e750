"""A tenant's storage: what it uses and its quota (``SAFT_TENANT_STORAGE_BYTES``).

Counted: uploaded datasets (their extracted size), multipart uploads in flight (their declared size, reserved
when the upload is created, so that no part can be refused for space half-way), and job outputs (checkpoints
and masks). Not counted: datasets registered in place (the operator's files) and a running job's snapshots.

A check and the write it allows belong in one transaction: ``lock_tenant`` first, so that two requests of one
tenant cannot both pass the check on Postgres (SQLite serialises writers anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .settings import Settings
from .tables import Checkpoint, Dataset, Job, Mask, Tenant, Upload

QUOTA_CODE = "storage_quota_exceeded"


class StorageQuotaExceeded(Exception):
    """Storing ``needed`` more bytes would take the tenant past its quota."""

    code = QUOTA_CODE

    def __init__(self, usage: Usage, needed: int) -> None:
        self.usage, self.needed = usage, needed
        self.message = (
            f"storing {needed:,} more bytes would exceed this tenant's storage quota: {usage.total:,} of "
            f"{usage.quota:,} bytes are used (SAFT_TENANT_STORAGE_BYTES); delete datasets or jobs, or abort "
            "uploads, to make room"
        )
        super().__init__(self.message)


@dataclass(frozen=True)
class Usage:
    """Bytes a tenant stores, by kind, and its quota (None: unlimited)."""

    datasets: int
    uploads: int
    jobs: int
    quota: int | None

    @property
    def total(self) -> int:
        return self.datasets + self.uploads + self.jobs

    @property
    def left(self) -> int | None:
        """Bytes the tenant may still store (None: unlimited)."""
        return None if self.quota is None else max(0, self.quota - self.total)

    def check(self, needed: int) -> None:
        """Raise ``StorageQuotaExceeded`` unless ``needed`` more bytes fit."""
        if self.quota is not None and self.total + needed > self.quota:
            raise StorageQuotaExceeded(self, needed)


def _stored_bytes(
    session: Session, *, tenant_id: str | None = None, exclude_upload: str | None = None
) -> dict[str, dict[str, int]]:
    """The one rule of what a tenant stores: kind (``datasets``, ``uploads``, ``jobs``) -> tenant id -> bytes,
    for ``tenant_id`` only or every tenant. Counted: datasets in the store (not those read in place), the
    declared size of uploads in flight (but ``exclude_upload``), checkpoints and masks; four grouped queries."""
    uploads = select(Upload.tenant_id, func.sum(Upload.size_bytes))
    if exclude_upload is not None:
        uploads = uploads.where(Upload.id != exclude_upload)
    queries = [
        ("datasets", Dataset.tenant_id,
         select(Dataset.tenant_id, func.sum(Dataset.size_bytes)).where(Dataset.external.is_(False))),
        ("uploads", Upload.tenant_id, uploads),
        ("jobs", Job.tenant_id,
         select(Job.tenant_id, func.sum(Checkpoint.size_bytes)).join(Job, Job.id == Checkpoint.job_id)),
        ("jobs", Job.tenant_id, select(Job.tenant_id, func.sum(Mask.size_bytes)).join(Job, Job.id == Mask.job_id)),
    ]
    stored: dict[str, dict[str, int]] = {"datasets": {}, "uploads": {}, "jobs": {}}
    for kind, owner, query in queries:
        if tenant_id is not None:
            query = query.where(owner == tenant_id)
        for tenant, size in session.execute(query.group_by(owner)):
            stored[kind][tenant] = stored[kind].get(tenant, 0) + int(size or 0)
    return stored


def tenant_usage(session: Session, tenant_id: str, settings: Settings, *, exclude_upload: str | None = None) -> Usage:
    """What ``tenant_id`` stores now; ``exclude_upload``: leave that upload's reservation out (it is being
    turned into a dataset, whose own size is then checked)."""
    stored = _stored_bytes(session, tenant_id=tenant_id, exclude_upload=exclude_upload)
    return Usage(
        datasets=stored["datasets"].get(tenant_id, 0),
        uploads=stored["uploads"].get(tenant_id, 0),
        jobs=stored["jobs"].get(tenant_id, 0),
        quota=settings.tenant_storage_bytes,
    )


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise quota checks of one tenant until the transaction ends (a row lock on Postgres; SQLite has one
    writer at a time, and its check runs in a write transaction started by the caller's first write)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def storage_by_tenant(session: Session) -> dict[str, int]:
    """Bytes each tenant stores (tenant id -> total, by ``tenant_usage``'s rule), for every tenant that stores
    anything (the metrics read this at scrape time)."""
    totals: dict[str, int] = {}
    for by_tenant in _stored_bytes(session).values():
        for tenant_id, size in by_tenant.items():
            totals[tenant_id] = totals.get(tenant_id, 0) + size
    return totals
