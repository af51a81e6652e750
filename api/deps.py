"""Dependencies of the routes, as ``Annotated`` aliases: the session, the caller's tenant, tenant-owned rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from saft_service import keys
from saft_service.db import session_factory
from saft_service.input_checks import ID_PATTERN
from saft_service.logs import add_to_context
from saft_service.settings import Settings
from saft_service.storage import Storage
from saft_service.tables import Dataset, Job, Tenant

from .problems import ProblemError


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


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


MISSING_KEY = ("unauthorized", "send an API key as 'Authorization: Bearer <key>'")
INVALID_KEY = ("invalid_api_key", "the API key is unknown or revoked")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_tenant(session: SessionDep, credentials: Credentials) -> Tenant:
    tenant = _authenticate(session, credentials)
    # End the read (the rows stay loaded): the connection goes back to the pool until the route's next query,
    # instead of staying checked out through an upload's extraction or a classify.
    session.commit()
    return tenant


def _authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None) -> Tenant:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ProblemError(401, *MISSING_KEY, headers=challenge)
    tenant = keys.authenticate(session, credentials.credentials)
    if tenant is None:
        raise ProblemError(401, *INVALID_KEY, headers=challenge)
    add_to_context(tenant=tenant.name)  # the request's log lines name the tenant from here on
    return tenant


def key_checker(settings: Settings) -> Callable[[str | None], tuple[str, str] | None]:
    """For ``limits.AuthenticateFirst``: an ``Authorization`` header value -> None if its key is valid, else
    the (code, detail) of the 401. A failing database lets the request through: the route then answers."""
    factory = session_factory(settings)
    log = logging.getLogger(__name__)

    def check(authorization: str | None) -> tuple[str, str] | None:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return MISSING_KEY
        try:
            with factory() as session:
                return None if keys.authenticate(session, key.strip()) is not None else INVALID_KEY
        except Exception as e:  # the route's own error handling answers (503 etc.)
            log.warning("could not check an API key before reading the body: %s", type(e).__name__)
            return None

    return check


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def get_tenant_dataset(
    session: SessionDep, tenant: CurrentTenant, dataset_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None or ds.tenant_id != tenant.id:
        raise ProblemError(404, "dataset_not_found", f"no dataset {dataset_id} in this tenant")
    return ds


TenantDataset = Annotated[Dataset, Depends(get_tenant_dataset)]


def get_tenant_job(
    session: SessionDep, tenant: CurrentTenant, job_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
) -> Job:
    job = tenant_job(session, tenant, job_id)
    session.commit()  # as in get_current_tenant: a file download holds no connection
    return job


def tenant_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    """The tenant's job ``job_id``: 404 ``job_not_found`` when unknown or another tenant's."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise ProblemError(404, "job_not_found", f"no job {job_id} in this tenant")
    add_to_context(job_id=job.id)
    return job


TenantJob = Annotated[Job, Depends(get_tenant_job)]


def get_tenant_job_briefly(
    settings: SettingsDep,
    credentials: Credentials,
    job_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)],
) -> Job:
    """``TenantJob`` read in a session closed before the route runs, for long answers (event streams): the
    request-long session of ``SessionDep`` would hold a database connection for as long as the answer lasts."""
    with session_factory(settings)() as session:
        return tenant_job(session, _authenticate(session, credentials), job_id)


TenantJobBriefly = Annotated[Job, Depends(get_tenant_job_briefly)]
