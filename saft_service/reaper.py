"""The reaper: the one owner of job liveness. Jobs never depend on the broker to be found again.

Every ``reaper_interval`` seconds (a thread in each API process; on Postgres an advisory lock lets one of them
act per pass, and every change is a compare-and-set on the job row anyway):

1. A ``running`` job whose heartbeat is older than ``heartbeat_timeout`` lost its worker (the machine crashed,
   the worker was killed as a whole, the database was unreachable from it for that long). It is requeued and
   its next attempt resumes from its last snapshot; after ``max_attempts`` starts it fails ``worker_lost``; a
   job whose cancellation was asked for is cancelled instead.
2. A dispatched ``queued`` job of this process's queue whose message the broker does not hold (lost in a Redis
   restart without persistence, never sent because the process died between the dispatch and the message, or
   refused while the broker was down) and that was last sent (or dispatched) more than ``requeue_after``
   seconds ago is sent again. A duplicate message is harmless: the claim is a compare-and-set on the row. Then
   the dispatcher fills the window (saft_service/dispatch.py): jobs requeued in step 1 wait their turn there.
3. A multipart upload past its ``expires_at`` (``SAFT_UPLOAD_TTL`` after it was created) is deleted with its
   parts, and so is an upload folder that no row names; an upload left ``completing`` by a process that died
   (no beat for five minutes) is pending again (see saft_service/multipart.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from . import jobs
from .db import session_scope
from .dispatch import dispatch, in_queue
from .metrics import count_reaper
from .multipart import reap_uploads
from .periodic import Periodic
from .queue import QueueUnavailable, enqueue_job, pending_job_ids
from .settings import Settings
from .tables import Job, utcnow

log = logging.getLogger(__name__)

# Key of the Postgres advisory lock that makes one API process the reaper of a pass.
_ADVISORY_KEY = 0x5AF7_0001


@dataclass
class ReapReport:
    """What one pass did (job ids)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    uploads_removed: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    skipped: bool = False  # another process holds the reaper's lock


def reap_stale(session: Session, settings: Settings, now: datetime) -> ReapReport:
    """Step 1: requeue, fail or cancel running jobs without a recent heartbeat. The caller commits."""
    report = ReapReport()
    cutoff = now - timedelta(seconds=settings.heartbeat_timeout)
    stale = session.scalars(
        select(Job).where(
            Job.status == jobs.JobStatus.RUNNING.value, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        )
    ).all()
    for job in stale:
        silent = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
        reason = f"no heartbeat from worker {job.worker} for {silent:.0f} s" if silent else "no heartbeat"
        if job.cancel_requested:
            if jobs.cancel_lost(session, job, reason):
                report.cancelled.append(job.id)
        elif job.attempts >= settings.max_attempts:
            if jobs.fail(session, job.id, "worker_lost", jobs.lost_message(job.attempts) + f" ({reason})"):
                report.failed.append(job.id)
        elif jobs.requeue(session, job, reason):
            report.requeued.append(job.id)
    return report


def lost_queued(session: Session, settings: Settings, now: datetime, pending: set[str] | None) -> list[str]:
    """Step 2: queued jobs last sent more than ``requeue_after`` ago whose message the broker does not hold
    (``pending``: the job ids of the broker's waiting messages; None when the broker cannot be inspected, then
    age alone decides)."""
    cutoff = now - timedelta(seconds=settings.requeue_after)
    rows = session.execute(
        select(Job.id, Job.enqueued_at, Job.dispatched_at).where(
            Job.status == jobs.JobStatus.QUEUED.value, in_queue(settings.queue_name), Job.dispatched_at.is_not(None)
        )
    ).all()
    return [
        job_id
        for job_id, enqueued_at, dispatched_at in rows
        # dispatched_at is set (the query asks for it); the test says so to the type checker
        if dispatched_at is not None and (enqueued_at or dispatched_at) < cutoff
        and (pending is None or job_id not in pending)
    ]


def reap_once(settings: Settings, now: datetime | None = None, *, judge_heartbeats: bool = True) -> ReapReport:
    """One pass of the reaper (both steps); messages are sent after the row changes are committed.
    ``judge_heartbeats=False`` skips step 1 (see ``Reaper``)."""
    now = now or utcnow()
    with session_scope(settings) as session:
        if not settings.embedded_database and not session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY}
        ):
            return ReapReport(skipped=True)
        report = reap_stale(session, settings, now) if judge_heartbeats else ReapReport()
        try:
            pending = pending_job_ids(settings)
        except Exception as e:  # the broker is down: nothing can be sent now anyway
            log.warning("reaper: cannot inspect the broker (%s); will retry", e)
            pending, broker_up = None, False
            lost: list[str] = []
        else:
            broker_up = True
            lost = lost_queued(session, settings, now, pending)
    for job_id in lost:
        try:
            enqueue_job(job_id, settings)
        except QueueUnavailable:
            log.warning("reaper: the broker did not take job %s; it stays queued and is sent later", job_id)
            continue
        with session_scope(settings) as session:
            jobs.mark_enqueued(session, job_id)
        report.resent.append(job_id)
    if broker_up:  # a broker that cannot be reached takes nothing new either
        report.dispatched = dispatch(settings)
    with session_scope(settings) as session:  # step 3: deletes are idempotent, so no lock is needed
        report.uploads_removed = reap_uploads(session, settings, now)
    if report.requeued or report.failed or report.cancelled or report.resent:
        log.warning(
            "reaper: requeued %s, failed %s, cancelled %s, re-sent %s",
            report.requeued, report.failed, report.cancelled, report.resent,
        )
    return report


class Reaper:
    """Runs ``reap_once`` every ``settings.reaper_interval`` seconds in a daemon thread until ``stop()``.

    Heartbeats are judged only once the reaper has seen the database for ``heartbeat_timeout`` seconds without
    a break: after the process starts, or after a database outage (during which no worker could write a
    heartbeat either), the workers first get a full timeout to beat again, so an outage does not requeue every
    running job.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._thread = Periodic("saft-reaper", settings.reaper_interval, self._pass)
        self._healthy_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _pass(self) -> None:
        now = time.monotonic()
        if self._healthy_since is None:
            self._healthy_since = now
        judge = now - self._healthy_since >= self.settings.heartbeat_timeout
        try:
            count_reaper(reap_once(self.settings, judge_heartbeats=judge))
        except Exception as e:  # the database is down, most likely: the next pass tries again
            log.warning("reaper pass failed: %s", e)
            self._healthy_since = None
