"""Fair dispatch: which queued jobs go to the broker, and when.

A submitted job is stored ``queued`` and waits in the store. The broker holds at most ``SAFT_DISPATCH_WINDOW``
messages of a queue that no worker has started yet (1 by default): with each worker holding the job it runs,
that is ``workers x 1 + 1`` jobs in flight. Whenever there is room, the dispatcher chooses the next job:

1. Across tenants, round-robin weighted by each tenant's ``share`` (start-time fair queuing): each dispatch
   gives the tenant a start tag ``max(its previous tag + 1 / share, V)``, where ``V`` is the largest tag
   given so far, and the tenant with the smallest next tag goes first (ties: the tenant served least
   recently, then the one whose job waited longest). A tenant with share 2 gets two turns for another's one;
   a tenant that was idle starts at ``V``, so it cannot catch up on turns it did not use.
2. Within a tenant: ``priority`` (high, normal, low), then first submitted, first served.

With one worker and a window of 1, a job of tenant B that arrives behind any number of tenant A's jobs starts
after at most one more of A's (the one already waiting in the broker).

Where it runs: in whatever process just changed what the window holds, right after that change commits: the
API after a submission and after a cancel, the worker after each claim (the moment a message leaves the
window), and the reaper once per pass (which also catches anything a dispatcher that died did not do). Two
dispatchers never exceed the window: each decides under a lock held until its commit, a Postgres advisory
transaction lock per queue, or SQLite's database write lock (taken first, by a write that changes nothing).

Liveness (the outbox of ``submission.py``, one step later): the decision is a row update (``dispatched_at``)
committed before the message is sent. A dispatcher that dies after the commit leaves a dispatched job without
a message; the reaper sends it after ``SAFT_REQUEUE_AFTER``, as it does for a message the broker lost. One that
dies before the commit changed nothing. Nothing runs twice: the worker's claim is a compare-and-set on the row.
A job the reaper takes back from a lost worker waits in the store again (its ``dispatched_at`` cleared) and is
dispatched in its turn, ahead of its tenant's later jobs of the same priority.

Queues: a job is for the queue of the process that stored it (``SAFT_QUEUE_NAME``); each queue has its own
window and its own dispatchers (jobs stored before this scheme have no queue: any queue's dispatcher takes them).
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import false, func, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import jobs
from .db import affected_rows, session_scope
from .jobspec import Priority
from .queue import QueueUnavailable, enqueue_job
from .settings import Settings
from .tables import Job, Tenant, utcnow

log = logging.getLogger(__name__)

PRIORITIES: dict[str, int] = {name: rank for rank, name in enumerate(get_args(Priority))}

# Postgres advisory lock of a queue's dispatcher: (class, crc32 of the queue name), apart from the reaper's key.
_LOCK_CLASS = 0x5AF7_0002
_NEVER = datetime.min.replace(tzinfo=UTC)


def _signed32(n: int) -> int:
    return n - (1 << 32) if n >= 1 << 31 else n


def in_queue(queue: str) -> Any:
    """The jobs ``queue``'s dispatcher and reaper look after: its own, and those stored without a queue."""
    return or_(Job.queue == queue, Job.queue.is_(None))


def lock_queue(session: Session, queue: str) -> None:
    """Hold the dispatch lock of ``queue`` until the session's transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, :obj)"),
            {"cls": _LOCK_CLASS, "obj": _signed32(zlib.crc32(queue.encode()))},
        )
    else:  # SQLite: a write, even of no row, takes the database's write lock before anything is read
        session.execute(update(Tenant).where(false()).values(name=Tenant.name))


def waiting(session: Session, queue: str) -> int:
    """Jobs of ``queue`` dispatched and not yet started: the messages the window counts."""
    return session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == jobs.JobStatus.QUEUED.value, in_queue(queue), Job.dispatched_at.is_not(None))
    ) or 0


@dataclass
class _Turn:
    """A tenant with jobs waiting in the store, in the order they go."""

    tenant: Tenant
    jobs: deque[Any]

    def start_tag(self, vtime: float) -> float:
        t = self.tenant
        return vtime if t.dispatch_start is None else max(t.dispatch_start + 1.0 / (t.share or 1.0), vtime)


def choose(session: Session, settings: Settings, now: datetime | None = None) -> list[str]:
    """Decide which jobs fill the window of ``settings.queue_name`` and mark them dispatched. Takes the queue's
    lock; the caller commits (then sends the messages)."""
    now = now or utcnow()
    queue = settings.queue_name
    lock_queue(session, queue)
    free = settings.dispatch_window - waiting(session, queue)
    if free <= 0:
        return []
    rows = session.execute(
        select(Job.id, Job.tenant_id, Job.created_at)
        .where(Job.status == jobs.JobStatus.QUEUED.value, in_queue(queue), Job.dispatched_at.is_(None))
        .order_by(Job.tenant_id, Job.priority.desc(), Job.created_at, Job.id)
    ).all()
    if not rows:
        return []
    by_tenant: dict[str, deque[Any]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant_id, deque()).append(row)
    tenants = session.scalars(select(Tenant).where(Tenant.id.in_(list(by_tenant)))).all()
    turns = [_Turn(t, by_tenant[t.id]) for t in tenants]
    vtime = session.scalar(select(func.max(Tenant.dispatch_start))) or 0.0
    chosen: list[str] = []
    while turns and len(chosen) < free:
        turn = min(turns, key=lambda u: (u.start_tag(vtime), u.tenant.dispatched_at or _NEVER, u.jobs[0].created_at))
        job = turn.jobs.popleft()
        if not turn.jobs:
            turns.remove(turn)
        # Compare-and-set: a job cancelled meanwhile (a cancel does not take this lock) is skipped.
        taken = affected_rows(
            session,
            update(Job)
            .where(Job.id == job.id, Job.status == jobs.JobStatus.QUEUED.value, Job.dispatched_at.is_(None))
            .values(dispatched_at=now, enqueued_at=None)
            .execution_options(synchronize_session=False),
        )
        if taken != 1:
            continue
        tag = turn.start_tag(vtime)
        turn.tenant.dispatch_start, turn.tenant.dispatched_at = tag, now
        vtime = max(vtime, tag)
        chosen.append(job.id)
    session.flush()
    return chosen


def send(settings: Settings, job_id: str) -> bool:
    """Send a dispatched job's message and record when; a broker that refuses leaves it to the reaper."""
    try:
        enqueue_job(job_id, settings)
    except QueueUnavailable:
        with session_scope(settings) as session:
            jobs.add_event(
                session, job_id, "message",
                "the job queue is unavailable; the job stays queued and is sent when the queue is back",
                level="warning",
            )
        return False
    with session_scope(settings) as session:
        jobs.mark_enqueued(session, job_id)
    return True


def dispatch(settings: Settings) -> list[str]:
    """Fill the window of ``settings.queue_name``: choose (committed), then send. Returns the ids chosen."""
    with session_scope(settings) as session:
        chosen = choose(session, settings)
    for job_id in chosen:
        send(settings, job_id)
    if chosen:
        log.info("dispatched %s to queue %s", ", ".join(chosen), settings.queue_name)
    return chosen


def dispatch_soon(settings: Settings) -> list[str]:
    """``dispatch``, for a caller whose own work is done and must not fail on it: a database error is logged and
    left to the reaper's next pass."""
    try:
        return dispatch(settings)
    except SQLAlchemyError as e:
        log.warning("dispatch of queue %s failed (%s); the reaper's next pass dispatches", settings.queue_name, e)
        return []
