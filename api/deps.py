"""Dependencies of the routes, as ``Annotated`` aliases: the session, the caller's tenant, tenant-owned rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from saft_service import keys
from saft_service.db import session_factory
from saft_service.settings import Settings
from saft_service.storage import Storage
from saft_service.tables import Dataset, Job, Tenant

from .problems import ProblemError


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_storage(settings: SettingsDep) -> Storage:
    return Storage(settings)


StorageDep = Annotated[Storage, Depends(get_storage)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `saft keys create` (or `saft serve`).")


def get_current_tenant(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Tenant:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ProblemError(
            401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'", headers=challenge
        )
    tenant = keys.authenticate(session, credentials.credentials)
    if tenant is None:
        raise ProblemError(401, "invalid_api_key", "the API key is unknown or revoked", headers=challenge)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def get_tenant_dataset(
    session: SessionDep, tenant: CurrentTenant, dataset_id: Annotated[str, Path(max_length=40)]
) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None or ds.tenant_id != tenant.id:
        raise ProblemError(404, "dataset_not_found", f"no dataset {dataset_id} in this tenant")
    return ds


TenantDataset = Annotated[Dataset, Depends(get_tenant_dataset)]


def get_tenant_job(
    session: SessionDep, tenant: CurrentTenant, job_id: Annotated[str, Path(max_length=40)]
) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise ProblemError(404, "job_not_found", f"no job {job_id} in this tenant")
    return job


TenantJob = Annotated[Job, Depends(get_tenant_job)]
