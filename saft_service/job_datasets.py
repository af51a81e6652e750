"""Which datasets a job uses, as rows (``job_datasets``): written with the job, queried for "in use".

A job's datasets are fixed when it is submitted, so they are recorded once, in the job's own transaction, and
"may this dataset be deleted?" is one indexed query instead of a read of every active job's spec.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .jobs import ACTIVE
from .jobspec import JobSpec
from .tables import Job, JobDataset


def record(session: Session, job_id: str, spec: JobSpec) -> None:
    """Add the rows of job ``job_id``: its training set, and each eval set under the name its evaluations get
    (the dataset id). Not committed: the caller commits them with the job."""
    session.add(JobDataset(job_id=job_id, dataset_id=spec.dataset_id, role=JobDataset.TRAIN))
    session.add_all(
        JobDataset(job_id=job_id, dataset_id=ds_id, role=JobDataset.EVAL, eval_name=ds_id)
        for ds_id in spec.eval_dataset_ids
    )


def active_job_using(session: Session, dataset_id: str) -> Job | None:
    """The oldest queued or running job that trains or evaluates on ``dataset_id``; None if there is none."""
    stmt = (
        select(Job)
        .join(JobDataset, JobDataset.job_id == Job.id)
        .where(JobDataset.dataset_id == dataset_id, Job.status.in_([s.value for s in ACTIVE]))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    return session.scalars(stmt).first()
