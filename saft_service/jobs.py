"""The job state machine. Every change of a job's status or stage goes through this module.

    queued --> running --> succeeded
       |          |  \\--> failed
       |          \\-----> cancelled
       \\--> failed | cancelled

``running -> running`` is a restart after a lost worker. Transitions are compare-and-set updates
(``UPDATE ... WHERE status IN (allowed sources)``), so the API cancelling a queued job and a worker claiming it
cannot both win. Each transition writes a ``JobEvent`` in the same transaction. Callers own the transaction
(commit after the call).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .tables import Checkpoint, Evaluation, Job, JobEvent, Mask, utcnow

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A transition the state machine does not allow (for example cancelling a finished job)."""

    def __init__(self, job_id: str, status: str, target: str) -> None:
        super().__init__(f"job {job_id} is {status}; it cannot become {target}")
        self.job_id, self.status, self.target = job_id, status, target


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL


def add_event(
    session: Session,
    job_id: str,
    kind: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event row (kinds: status, stage, progress, message, metrics, error)."""
    event = JobEvent(
        job_id=job_id, kind=kind, level=level, message=message, data=data or {}, created_at=utcnow()
    )
    session.add(event)
    return event


def _transition(
    session: Session, job_id: str, target: JobStatus, sources: Iterable[JobStatus], **values: Any
) -> bool:
    """Compare-and-set ``status`` to ``target`` if it is one of ``sources``. Returns whether it applied."""
    sources = list(sources)
    for s in sources:
        if target not in TRANSITIONS[s]:
            raise AssertionError(f"transition {s} -> {target} is not in the state machine")
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in sources]))
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def create(session: Session, *, tenant_id: str, dataset_id: str, spec: dict[str, Any]) -> Job:
    """A new queued job. ``spec`` is the validated request (``JobSpec.model_dump(mode='json')``)."""
    job = Job(
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        status=JobStatus.QUEUED.value,
        spec=spec,
        metrics={},
        step=0,
        total_steps=0,
        attempts=0,
        cancel_requested=False,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", "job queued", data={"status": "queued"})
    return job


def claim(
    session: Session,
    job_id: str,
    *,
    worker: str,
    redelivered: bool = False,
    heartbeat_timeout: float = 300.0,
    max_attempts: int = 2,
) -> Job | None:
    """Take a job for running: ``queued -> running``, or restart a ``running`` job whose worker was lost.

    A message is a duplicate (and ``None`` is returned) when the job is already finished, or running with a
    live worker. A running job counts as lost when the broker says the message was redelivered (the worker
    process died before acking) or its heartbeat is older than ``heartbeat_timeout``. After ``max_attempts``
    starts, a lost job fails with ``worker_lost`` instead of starting again.
    """
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s does not exist; dropping the message", job_id)
        return None
    now = utcnow()
    values: dict[str, Any] = dict(
        worker=worker, heartbeat_at=now, stage=None, step=0, total_steps=0, attempts=job.attempts + 1
    )
    if job.status == JobStatus.QUEUED:
        if not _transition(session, job_id, JobStatus.RUNNING, [JobStatus.QUEUED], started_at=now, **values):
            return None
        add_event(session, job_id, "status", "job started", data={"status": "running", "worker": worker})
    elif job.status == JobStatus.RUNNING:
        stale = job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=heartbeat_timeout)
        if not (redelivered or stale):
            log.info("job %s is running on %s; dropping a duplicate message", job_id, job.worker)
            return None
        if job.attempts >= max_attempts:
            fail(
                session,
                job_id,
                "worker_lost",
                f"the worker running this job stopped {job.attempts} times (out of memory or killed?); "
                "try a smaller batch_size or model",
            )
            return None
        if not _transition(session, job_id, JobStatus.RUNNING, [JobStatus.RUNNING], **values):
            return None
        add_event(
            session,
            job_id,
            "status",
            f"job restarted after its worker {job.worker} was lost",
            level="warning",
            data={"status": "running", "worker": worker, "attempt": job.attempts + 1},
        )
    else:
        log.info("job %s is %s; dropping the message", job_id, job.status)
        return None
    session.refresh(job)
    return job


def set_stage(session: Session, job_id: str, stage: str) -> None:
    """A running job enters ``stage``; its step counter restarts."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(stage=stage, step=0, total_steps=0, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    add_event(session, job_id, "stage", f"stage {stage}", data={"stage": stage})


def report_progress(
    session: Session,
    job_id: str,
    *,
    stage: str,
    step: int,
    total: int,
    metrics: dict[str, float] | None = None,
    event: bool = True,
) -> None:
    """Record progress (and the heartbeat) of a running job; ``event`` also appends a progress event."""
    values: dict[str, Any] = dict(step=step, total_steps=total, heartbeat_at=utcnow())
    if metrics:
        job = session.get(Job, job_id)
        if job is not None:
            values["metrics"] = {**(job.metrics or {}), **metrics}
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if event:
        data: dict[str, Any] = {"stage": stage, "step": step, "total_steps": total, **(metrics or {})}
        add_event(session, job_id, "progress", f"{stage} {step}/{total}", data=data)


def add_message(session: Session, job_id: str, level: str, text: str) -> None:
    """A note or warning from the core worth showing the user."""
    add_event(session, job_id, "message", text, level="warning" if level == "warning" else "info")


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a job: a queued one at once, a running one cooperatively (the worker checks between steps).

    Raises ``IllegalTransition`` if the job already finished.
    """
    now = utcnow()
    if _transition(
        session, job.id, JobStatus.CANCELLED, [JobStatus.QUEUED], finished_at=now, cancel_requested=True
    ):
        add_event(session, job.id, "status", "job cancelled before it started", data={"status": "cancelled"})
    else:
        result = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.refresh(job)
            raise IllegalTransition(job.id, job.status, JobStatus.CANCELLED)
        add_event(session, job.id, "status", "cancellation requested; the job stops after the current step")
    session.flush()
    session.refresh(job)
    return job


def cancel_requested(session: Session, job_id: str) -> bool:
    """Whether the user asked to cancel this job (the worker polls this)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def mark_cancelled(session: Session, job_id: str) -> bool:
    """The worker stopped a running job on request."""
    if not _transition(session, job_id, JobStatus.CANCELLED, [JobStatus.RUNNING], finished_at=utcnow()):
        return False
    add_event(session, job_id, "status", "job cancelled", data={"status": "cancelled"})
    return True


def fail(session: Session, job_id: str, code: str, message: str) -> bool:
    """End a queued or running job as failed with a stable ``code`` and a message the user can act on."""
    if not _transition(
        session,
        job_id,
        JobStatus.FAILED,
        [JobStatus.QUEUED, JobStatus.RUNNING],
        finished_at=utcnow(),
        error_code=code,
        error_message=message,
    ):
        return False
    add_event(session, job_id, "error", message, level="error", data={"status": "failed", "code": code})
    return True


def succeed(
    session: Session,
    job_id: str,
    *,
    metrics: dict[str, float],
    checkpoint: Checkpoint,
    mask: Mask | None,
    evaluations: list[Evaluation],
    training_steps: int = 0,
) -> bool:
    """End a running job as succeeded and store what it produced, in one transaction. Its progress then shows
    the ``training_steps`` it took."""
    finished: datetime = utcnow()
    if not _transition(
        session,
        job_id,
        JobStatus.SUCCEEDED,
        [JobStatus.RUNNING],
        finished_at=finished,
        metrics=metrics,
        stage=None,
        step=training_steps,
        total_steps=training_steps,
    ):
        return False
    session.add(checkpoint)
    if mask is not None:
        session.add(mask)
    session.add_all(evaluations)
    if metrics:
        add_event(session, job_id, "metrics", "final metrics", data=dict(metrics))
    add_event(session, job_id, "status", "job succeeded", data={"status": "succeeded"})
    return True


def recover_after_restart(session: Session) -> list[str]:
    """For a single-worker deployment (``saft serve``) starting up: no job can be running, so ``running`` rows
    were left by a process that died; fail them (``worker_lost``). Returns the ids of queued jobs, which the
    caller sends to the queue again (a duplicate message is dropped by ``claim``)."""
    for job_id in session.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING.value)):
        fail(
            session, job_id, "worker_lost", "the service stopped while this job was running; submit it again"
        )
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED.value)))
