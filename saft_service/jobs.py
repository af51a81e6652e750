"""The job state machine. Every change of a job's status or stage goes through this module.

    queued --> running --> succeeded
       |  ^       |  \\--> failed
       |  \\-------|  \\--> cancelled
       \\--> failed | cancelled

``running -> queued`` is a requeue after the job's worker was lost (the reaper: no heartbeat); ``running ->
running`` a restart by a worker that knows the previous process is dead. Transitions are compare-and-set
updates (``UPDATE ... WHERE status IN (allowed sources)``), so the API cancelling a queued job and a worker
claiming it cannot both win. Each transition writes a ``JobEvent`` in the same transaction, and a final one its
webhook deliveries (``saft_service.webhooks``). Callers own the transaction (commit after the call).

Fencing: ``attempts`` counts the starts of a job and is the lease of the process running it. Every write a
worker makes about its job (heartbeat, stage, progress, its end) carries the attempt it claimed and applies only
while the job is still ``running`` in that attempt, so a process that lost its job (requeued because its
heartbeat went stale, cancelled while its worker was gone) can never overwrite what a later attempt does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import webhooks
from .db import affected_rows
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
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
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
    """Append an event row (kinds: status, stage, progress, message, metrics, warning, error)."""
    event = JobEvent(
        job_id=job_id, kind=kind, level=level, message=message, data=data or {}, created_at=utcnow()
    )
    session.add(event)
    return event


def _transition(
    session: Session,
    job_id: str,
    target: JobStatus,
    sources: Iterable[JobStatus],
    *,
    attempt: int | None = None,
    **values: Any,
) -> bool:
    """Compare-and-set ``status`` to ``target`` if it is one of ``sources`` (and, given ``attempt``, the job is
    still in that attempt). Returns whether it applied."""
    sources = list(sources)
    for s in sources:
        if target not in TRANSITIONS[s]:
            raise IllegalTransition(job_id, s, target)
    stmt = update(Job).where(Job.id == job_id, Job.status.in_([s.value for s in sources]))
    if attempt is not None:
        stmt = stmt.where(Job.attempts == attempt)
    changed = affected_rows(
        session, stmt.values(status=target.value, **values).execution_options(synchronize_session=False)
    )
    if changed != 1:
        return False
    if target in TERMINAL:  # the webhook deliveries commit (or roll back) with the final transition
        webhooks.enqueue_job_event(session, job_id, f"job.{target.value}")
    return True


def _running(job_id: str, attempt: int | None) -> Any:
    """The WHERE clause of a worker's write: the job is running (in ``attempt``, when given)."""
    clause = (Job.id == job_id) & (Job.status == JobStatus.RUNNING.value)
    return clause & (Job.attempts == attempt) if attempt is not None else clause


def create(
    session: Session, *, tenant_id: str, dataset_id: str, spec: dict[str, Any], queue: str | None = None,
    priority: int = 1,
) -> Job:
    """A new queued job. ``spec`` is the validated request (``JobSpec.model_dump(mode='json')``); ``queue`` and
    ``priority`` (0 low, 1 normal, 2 high) are for the dispatcher (saft_service/dispatch.py), which sends it."""
    job = Job(
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        status=JobStatus.QUEUED.value,
        queue=queue,
        priority=priority,
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


def _worker_process_gone(recorded: str | None, worker: str) -> bool:
    """Whether the process that ran a job (``recorded``: ``node/pid``) is known to be dead: it ran under this
    worker's node (so on this host) and its pid no longer exists. Anything else is not known."""
    if not recorded or "/" not in recorded or "/" not in worker:
        return False
    node, _, pid = recorded.rpartition("/")
    if node != worker.rpartition("/")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim(
    session: Session,
    job_id: str,
    *,
    worker: str,
    redelivered: bool = False,
    heartbeat_timeout: float = 60.0,
    max_attempts: int = 3,
) -> Job | None:
    """Take a job for running: ``queued -> running``, or restart a ``running`` job whose worker was lost.

    ``worker`` is ``node/pid`` of the calling process. A message is a duplicate (and ``None`` is returned) when
    the job is finished, or running with a live worker. A running job counts as lost when its heartbeat is
    older than ``heartbeat_timeout``, or when the broker redelivered the message and the process that ran the
    job, on this worker's node, is gone (a pool process killed under a live worker). A redelivery alone is not
    enough: a broker also redelivers when a live worker's connection drops. After ``max_attempts`` starts, a
    lost job fails with ``worker_lost`` instead of starting again. The returned job's ``attempts`` is the
    caller's lease (see the module docstring).
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
        if job.attempts >= max_attempts:
            fail(session, job_id, "worker_lost", lost_message(job.attempts))
            return None
        if not _transition(
            session, job_id, JobStatus.RUNNING, [JobStatus.QUEUED], attempt=job.attempts,
            started_at=job.started_at or now, **values,
        ):
            return None
        text = "job started" if job.attempts == 0 else f"job resumed (attempt {job.attempts + 1} of {max_attempts})"
        add_event(
            session, job_id, "status", text,
            data={"status": "running", "worker": worker, "attempt": job.attempts + 1},
        )
    elif job.status == JobStatus.RUNNING:
        stale = job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=heartbeat_timeout)
        if not (stale or (redelivered and _worker_process_gone(job.worker, worker))):
            log.info("job %s is running on %s; dropping a duplicate message", job_id, job.worker)
            return None
        if job.attempts >= max_attempts:
            fail(session, job_id, "worker_lost", lost_message(job.attempts))
            return None
        if not _transition(session, job_id, JobStatus.RUNNING, [JobStatus.RUNNING], attempt=job.attempts, **values):
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


def lost_message(attempts: int) -> str:
    return (
        f"the worker running this job was lost {attempts} times (killed, out of memory, or its machine went "
        "down); try a smaller batch_size or model, or ask the operator to check the workers"
    )


def cancel_lost(session: Session, job: Job, reason: str) -> bool:
    """A running job whose cancellation was asked for and whose worker is lost: cancelled now."""
    if not _transition(
        session, job.id, JobStatus.CANCELLED, [JobStatus.RUNNING], attempt=job.attempts, finished_at=utcnow()
    ):
        return False
    add_event(session, job.id, "status", f"job cancelled ({reason})", data={"status": "cancelled"})
    return True


def heartbeat(session: Session, job_id: str, attempt: int) -> bool:
    """The running process of ``attempt`` is alive. False: the job is no longer its own (stop working on it)."""
    changed = affected_rows(
        session,
        update(Job)
        .where(_running(job_id, attempt))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return changed == 1


def requeue(session: Session, job: Job, reason: str) -> bool:
    """``running -> queued`` for a job whose worker is lost; the next attempt resumes from its snapshot."""
    if not _transition(
        session, job.id, JobStatus.QUEUED, [JobStatus.RUNNING], attempt=job.attempts,
        stage=None, worker=None, enqueued_at=None, dispatched_at=None,  # back to the store, dispatched in turn
    ):
        return False
    add_event(
        session, job.id, "status", f"{reason}; requeued (attempt {job.attempts} of the job was lost)",
        level="warning", data={"status": "queued", "attempt": job.attempts},
    )
    return True


def mark_enqueued(session: Session, job_id: str) -> None:
    """The broker took the job's message now (the reaper re-sends a queued job's message only after a while)."""
    session.execute(
        update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()).execution_options(synchronize_session=False)
    )


def set_stage(session: Session, job_id: str, stage: str, *, attempt: int | None = None) -> bool:
    """A running job enters ``stage``; its step counter restarts."""
    changed = affected_rows(
        session,
        update(Job)
        .where(_running(job_id, attempt))
        .values(stage=stage, step=0, total_steps=0, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if changed != 1:
        return False
    add_event(session, job_id, "stage", f"stage {stage}", data={"stage": stage})
    return True


def report_progress(
    session: Session,
    job_id: str,
    *,
    stage: str,
    step: int,
    total: int,
    metrics: dict[str, float] | None = None,
    event: bool = True,
    attempt: int | None = None,
) -> bool:
    """Record progress (and the heartbeat) of a running job; ``event`` also appends a progress event."""
    values: dict[str, Any] = dict(step=step, total_steps=total, heartbeat_at=utcnow())
    if metrics:
        job = session.get(Job, job_id)
        if job is not None:
            values["metrics"] = {**(job.metrics or {}), **metrics}
    changed = affected_rows(
        session,
        update(Job)
        .where(_running(job_id, attempt))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if changed != 1:
        return False
    if event:
        data: dict[str, Any] = {"stage": stage, "step": step, "total_steps": total, **(metrics or {})}
        add_event(session, job_id, "progress", f"{stage} {step}/{total}", data=data)
    return True


def add_message(session: Session, job_id: str, level: str, text: str, *, attempt: int | None = None) -> bool:
    """A note or warning from the core worth showing the user (with ``attempt``: only while the job is still
    running in that attempt, so a lost process adds nothing after a later attempt's events)."""
    if attempt is not None and session.scalar(select(Job.id).where(_running(job_id, attempt))) is None:
        return False
    add_event(session, job_id, "message", text, level="warning" if level == "warning" else "info")
    return True


def request_cancel(session: Session, job: Job, *, heartbeat_timeout: float = 60.0) -> Job:
    """Cancel a job: a queued one at once, a running one cooperatively (the worker checks between steps), a
    running one whose heartbeat is older than ``heartbeat_timeout`` (its worker is gone) at once.

    Raises ``IllegalTransition`` if the job already finished.
    """
    now = utcnow()
    silent = job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=heartbeat_timeout)
    if _transition(
        session, job.id, JobStatus.CANCELLED, [JobStatus.QUEUED], finished_at=now, cancel_requested=True
    ):
        add_event(session, job.id, "status", "job cancelled before it started", data={"status": "cancelled"})
    elif job.status == JobStatus.RUNNING and silent and _transition(
        session, job.id, JobStatus.CANCELLED, [JobStatus.RUNNING], attempt=job.attempts,
        finished_at=now, cancel_requested=True,
    ):
        add_event(
            session, job.id, "status", "job cancelled (its worker had stopped sending heartbeats)",
            data={"status": "cancelled"},
        )
    else:
        changed = affected_rows(
            session,
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        if changed != 1:
            session.refresh(job)
            raise IllegalTransition(job.id, job.status, JobStatus.CANCELLED)
        add_event(session, job.id, "status", "cancellation requested; the job stops after the current step")
    session.flush()
    session.refresh(job)
    return job


def cancel_requested(session: Session, job_id: str) -> bool:
    """Whether the user asked to cancel this job (the worker polls this)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def mark_cancelled(session: Session, job_id: str, *, attempt: int | None = None) -> bool:
    """The worker stopped a running job on request."""
    if not _transition(
        session, job_id, JobStatus.CANCELLED, [JobStatus.RUNNING], attempt=attempt, finished_at=utcnow()
    ):
        return False
    add_event(session, job_id, "status", "job cancelled", data={"status": "cancelled"})
    return True


def fail(session: Session, job_id: str, code: str, message: str, *, attempt: int | None = None) -> bool:
    """End a queued or running job as failed with a stable ``code`` and a message the user can act on.
    With ``attempt`` (a worker failing its own job), only a job still running in that attempt."""
    sources = [JobStatus.RUNNING] if attempt is not None else [JobStatus.QUEUED, JobStatus.RUNNING]
    if not _transition(
        session,
        job_id,
        JobStatus.FAILED,
        sources,
        attempt=attempt,
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
    warnings: list[dict[str, Any]] | None = None,
    attempt: int | None = None,
) -> bool:
    """End a running job as succeeded and store what it produced, in one transaction. Its progress then shows
    the ``training_steps`` it took. ``warnings`` (``{code, message, hint, **numbers}`` each, from
    ``saft_core.health``) are stored on the row and written as one ``warning`` event each: the job still
    succeeds."""
    warnings = list(warnings or [])
    finished: datetime = utcnow()
    if not _transition(
        session,
        job_id,
        JobStatus.SUCCEEDED,
        [JobStatus.RUNNING],
        attempt=attempt,
        finished_at=finished,
        metrics=metrics,
        stage=None,
        step=training_steps,
        total_steps=training_steps,
        warnings=warnings,
    ):
        return False
    session.add(checkpoint)
    if mask is not None:
        session.add(mask)
    session.add_all(evaluations)
    for w in warnings:
        data = {k: v for k, v in w.items() if k != "message"}
        add_event(session, job_id, "warning", w["message"], level="warning", data=data)
    if warnings:  # one delivery for the job's training-health warnings, beside its job.succeeded
        webhooks.enqueue_job_event(session, job_id, "job.warning", {"warnings": [
            {k: w[k] for k in ("code", "message", "hint") if k in w} for w in warnings]})
    if metrics:
        add_event(session, job_id, "metrics", "final metrics", data=dict(metrics))
    add_event(session, job_id, "status", "job succeeded", data={"status": "succeeded"})
    return True


def recover_after_restart(session: Session, *, max_attempts: int = 3) -> list[str]:
    """For a single-worker deployment (``saft serve``) starting up: no job can be running, so ``running`` rows
    were left by a process that died with the service. Each goes back to the queue and resumes from its last
    snapshot (or fails ``worker_lost`` after ``max_attempts`` starts). Returns the ids of the queued jobs; the
    caller dispatches (saft_service/dispatch.py) those that wait in the store."""
    for job in session.scalars(select(Job).where(Job.status == JobStatus.RUNNING.value)).all():
        if job.cancel_requested:
            if _transition(session, job.id, JobStatus.CANCELLED, [JobStatus.RUNNING], finished_at=utcnow()):
                add_event(session, job.id, "status", "job cancelled (the service stopped while it ran)",
                          data={"status": "cancelled"})
        elif job.attempts >= max_attempts:
            fail(session, job.id, "worker_lost", lost_message(job.attempts))
        else:
            requeue(session, job, "the service stopped while this job was running")
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED.value)))
