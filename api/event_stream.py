"""A job's events as Server-Sent Events, with no database connection held while a stream waits.

One ``EventWatch`` per API process polls the database every ``SAFT_EVENT_POLL_INTERVAL`` seconds with one query
for all the jobs being streamed (their newest event id and whether they have finished) and wakes the streams
whose job has news. A woken stream reads its new events in a short session of its own, through a semaphore of
``STREAM_DB_SLOTS``, so however many streams are open they hold no connection while waiting and at most that
many at once while reading; the rest of the pool is left to other requests.

A stream ends only after a read that saw the job finished *and* no event after the cursor, with the status
read before the events: every event committed before the job finished has then been sent, the last included.

Event ids come from a sequence when the row is inserted, not when it is committed, so on Postgres an event
can become visible after one with a larger id (two writers: a worker's progress and an API's cancel). A
stream therefore also re-reads, for ``SETTLE_S`` seconds, below its cursor and sends what it has not sent yet;
such a late event goes out without an SSE ``id`` so that a reconnecting client still resumes after the
largest id it got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import State

from saft_service import jobs
from saft_service.tables import Job, JobEvent

from .schemas import JobEventPublic

log = logging.getLogger(__name__)

STREAM_DB_SLOTS = 4  # connections all streams of one API process may use at once for their reads
READ_BATCH = 1000  # events per read
KEEPALIVE_S = 15.0  # a waiting stream re-reads (and sse-starlette pings) at least this often
RETRY_S = 2.0  # wait after a failed read (database restarting) before trying again
SETTLE_S = 5.0  # how long an event below one already sent may still appear (its transaction committing)


def read_after(
    factory: sessionmaker[Session], job_id: str, cursor: int, floor: int | None = None
) -> tuple[list[JobEvent], bool]:
    """Events of ``job_id`` after ``cursor`` (at most READ_BATCH, oldest first), preceded by those between
    ``floor`` and ``cursor`` when a floor is given, and whether the job had finished (or is gone) when this
    read began."""

    def between(low: int, high: int | None) -> list[JobEvent]:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > low)
        if high is not None:
            stmt = stmt.where(JobEvent.id < high)
        return list(session.scalars(stmt.order_by(JobEvent.id).limit(READ_BATCH)))

    with factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))  # first: see the module doc
        late = between(floor, cursor) if floor is not None and floor < cursor else []
        events = late + between(cursor, None)
    return events, status is None or jobs.is_terminal(status)


@dataclass(eq=False)
class _Waiter:
    cursor: int
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class EventWatch:
    """Wakes waiting streams when their job has an event after their cursor or has finished."""

    def __init__(self, factory: sessionmaker[Session], interval: float) -> None:
        self.factory = factory
        self.interval = interval
        self.loop = asyncio.get_running_loop()  # made by ``event_watch`` inside the server's loop
        self.slots = asyncio.Semaphore(STREAM_DB_SLOTS)
        self._waiters: dict[str, set[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, job_id: str, cursor: int, timeout: float) -> None:
        """Return once the job has news after ``cursor``, or after ``timeout`` seconds."""
        waiter = _Waiter(cursor)
        self._waiters.setdefault(job_id, set()).add(waiter)
        if self._task is None:
            self._task = asyncio.create_task(self._poll_while_watched())
        try:
            await asyncio.wait_for(waiter.woken.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    async def _poll_while_watched(self) -> None:
        try:
            while self._waiters:
                await asyncio.sleep(self.interval)
                ids = list(self._waiters)
                if not ids:
                    break
                try:
                    news = await asyncio.to_thread(self._latest, ids)
                except SQLAlchemyError as e:  # the streams re-read on their own after KEEPALIVE_S
                    log.warning("event watch could not poll the database: %s", e)
                    continue
                except Exception:  # a bug here must not leave every stream waiting out its keep-alive
                    log.exception("event watch failed to poll")
                    continue
                for job_id, (last_id, finished) in news.items():
                    for waiter in self._waiters.get(job_id, ()):
                        if finished or last_id > waiter.cursor:
                            waiter.woken.set()
        finally:
            self._task = None

    def _latest(self, job_ids: list[str]) -> dict[str, tuple[int, bool]]:
        """Per job: its newest event id and whether it has finished (a deleted job counts as finished)."""
        with self.factory() as session:
            status = {j: s for j, s in session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))}
            last = {
                j: n
                for j, n in session.execute(
                    select(JobEvent.job_id, func.max(JobEvent.id))
                    .where(JobEvent.job_id.in_(job_ids))
                    .group_by(JobEvent.job_id)
                )
            }
        return {j: (last.get(j) or 0, j not in status or jobs.is_terminal(status[j])) for j in job_ids}


def event_watch(state: State, factory: sessionmaker[Session], interval: float) -> EventWatch:
    """The process's watch, kept on ``state`` (the app's state) and made on first use in the running loop."""
    watch: EventWatch | None = getattr(state, "event_watch", None)
    if watch is None or watch.loop is not asyncio.get_running_loop():
        watch = EventWatch(factory, interval)
        state.event_watch = watch
    return watch


async def job_event_stream(watch: EventWatch, job_id: str, after: int) -> AsyncIterator[dict[str, str]]:
    """SSE messages of ``job_id``'s events after ``after``, then ``event: end`` once the job has finished."""
    cursor = floor = after  # largest id sent; ids at or below the floor are settled
    sent: set[int] = set()  # ids sent above the floor
    marks: deque[tuple[float, int]] = deque()  # (when, cursor then): the floor follows SETTLE_S behind
    while True:
        while marks and marks[0][0] < time.monotonic() - SETTLE_S:
            floor = max(floor, marks.popleft()[1])
            sent = {i for i in sent if i > floor}
        try:
            async with watch.slots:
                events, finished = await asyncio.to_thread(read_after, watch.factory, job_id, cursor, floor)
        except SQLAlchemyError as e:
            log.warning("event stream of job %s could not read: %s", job_id, e)
            await asyncio.sleep(RETRY_S)
            continue
        new = [event for event in events if event.id not in sent]
        for event in new:
            message = {"event": event.kind, "data": JobEventPublic.of(event).model_dump_json()}
            if event.id > cursor:
                cursor = event.id
                message["id"] = str(event.id)
            sent.add(event.id)
            yield message
        marks.append((time.monotonic(), cursor))
        if new:
            continue
        if finished:
            yield {"event": "end", "data": "{}"}
            return
        await watch.wait(job_id, cursor, KEEPALIVE_S)
