"""Job submission: one function that the API route calls (and anything else that submits jobs).

The request arrives validated (``JobSpec``: ranges, templates, model); this is where it is checked against the
store (the datasets are this tenant's, the tenant's quota) and stored with the datasets it uses.

The row first, then the message (a transactional outbox): a job is committed ``queued`` before its message is
sent, and a message the broker does not take now is sent by the reaper once the broker is back, so a job is
never lost between the two and never fails because the queue blinked. Whether its message goes now or the job
waits in the store for its turn is the dispatcher's decision (saft_service/dispatch.py).

The tenant's quota of active jobs holds under concurrent submissions: each submission first takes a write lock
on the tenant's row (a row lock on Postgres; SQLite's database write lock), so a tenant's submissions count and
insert one at a time, while other tenants' submissions go on in parallel on Postgres.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import job_datasets, jobs
from .dispatch import PRIORITIES, dispatch
from .jobspec import JobSpec
from .settings import Settings
from .tables import Dataset, Job, Tenant

log = logging.getLogger(__name__)


class SubmissionRefused(Exception):
    """A job that cannot be submitted; ``code`` is the API's problem code, ``field`` the request field."""

    def __init__(self, code: str, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.extra = code, message, field, extra


class DatasetNotFound(SubmissionRefused):
    pass


class QuotaExceeded(SubmissionRefused):
    pass


def submit_job(
    session: Session, settings: Settings, *, tenant: Tenant, spec: JobSpec,
    also: Callable[[Session, Job], None] | None = None,
) -> Job:
    """Check, store and enqueue a job for ``tenant``; ``spec`` is the validated request. Commits; ``also``
    writes more in the job's transaction (the API records the request's idempotent answer there).

    Raises ``DatasetNotFound`` or ``QuotaExceeded`` (nothing stored). The returned job is ``queued``.
    """
    # 1. One submission per tenant at a time from here to the commit (see the module docstring).
    session.execute(update(Tenant).where(Tenant.id == tenant.id).values(name=Tenant.name))
    # 2. Every referenced dataset must be this tenant's.
    for field, ids in (("dataset_id", [spec.dataset_id]), ("eval_dataset_ids", spec.eval_dataset_ids)):
        for ds_id in ids:
            ds = session.get(Dataset, ds_id)
            if ds is None or ds.tenant_id != tenant.id:
                session.rollback()
                raise DatasetNotFound("dataset_not_found", f"{field}: no dataset {ds_id} in this tenant", field=field)
    # 3. The tenant's quota of queued and running jobs.
    active = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant.id, Job.status.in_([s.value for s in jobs.ACTIVE]))
    ).scalar_one()
    if active >= settings.max_active_jobs:
        session.rollback()
        raise QuotaExceeded(
            "too_many_active_jobs",
            f"this tenant has {active} queued or running jobs, the most allowed (SAFT_MAX_ACTIVE_JOBS); "
            "wait for one to finish or cancel one",
        )
    # 4. The row (the truth) and the rows of the datasets it uses, committed together; then the message.
    job = jobs.create(
        session, tenant_id=tenant.id, dataset_id=spec.dataset_id, spec=spec.model_dump(mode="json"),
        queue=settings.queue_name, priority=PRIORITIES[spec.priority],
    )
    job_datasets.record(session, job.id, spec)
    if also is not None:
        also(session, job)
    session.commit()
    # From here the job exists: a database error must not turn into an error answer (a client retrying it
    # would make a second job). A job not dispatched now is dispatched by the reaper's next pass.
    try:
        dispatch(settings)
        session.refresh(job)
    except SQLAlchemyError as e:
        session.rollback()
        log.warning("job %s stored, but dispatching failed (%s); the reaper dispatches it", job.id, e)
    log.info("tenant %s queued job %s", tenant.name, job.id)
    return job

