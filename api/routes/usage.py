"""The tenant's storage: bytes used by kind, and the quota."""

from __future__ import annotations

from fastapi import APIRouter

from saft_service.usage import tenant_usage

from ..deps import CurrentTenant, SessionDep, SettingsDep
from ..problems import AUTH_RESPONSES
from ..schemas import UsagePublic

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=AUTH_RESPONSES)


@router.get("", response_model=UsagePublic, summary="Storage used and the quota")
def get_usage(tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> UsagePublic:
    """Datasets (uploaded ones; external datasets are the operator's files), multipart uploads in flight (their
    declared size is reserved when they start) and job outputs (checkpoints, masks) count against
    `SAFT_TENANT_STORAGE_BYTES`."""
    u = tenant_usage(session, tenant.id, settings)
    return UsagePublic(
        storage_bytes=u.total, storage_quota_bytes=u.quota, datasets_bytes=u.datasets, uploads_bytes=u.uploads,
        jobs_bytes=u.jobs,
    )
