"""The event stream ends only after the job's last event: a job that finishes between the two statements of a
read (status, then events) still has its final event sent before ``event: end``. On SQLite and on Postgres
(whose read-committed statements each see the newest commits, where the race was)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import event, insert

from api.event_stream import EventWatch, job_event_stream
from saft_service import db, jobs, keys
from saft_service.settings import Settings
from saft_service.tables import Job, JobEvent, utcnow


@pytest.fixture
def settings(migrated_settings: Settings) -> Settings:
    return migrated_settings


def test_a_job_finishing_in_the_middle_of_a_read_still_has_its_last_event_sent(settings: Settings) -> None:
    factory = db.session_factory(settings)
    with factory() as s:
        tenant = keys.get_or_create_tenant(s, "t")
        job = jobs.create(s, tenant_id=tenant.id, dataset_id=None, spec={"dataset_id": "ds_x"})
        s.commit()
        job_id = job.id
    armed = False

    def finish_the_job_now(*_: Any) -> None:
        # Runs right after the first statement of the stream's next read: the job is cancelled (its last event
        # and its final status in one commit) before the read's second statement.
        nonlocal armed
        if armed:
            armed = False
            with factory() as other:
                jobs.request_cancel(other, other.get(Job, job_id))
                other.commit()

    engine = db.get_engine(settings)
    event.listen(engine, "after_cursor_execute", finish_the_job_now)

    async def consume() -> list[tuple[str, str]]:
        nonlocal armed
        watch = EventWatch(factory, interval=0.05)
        seen = []
        async for message in job_event_stream(watch, job_id, 0):
            data = json.loads(message["data"])
            seen.append((message["event"], data.get("data", {}).get("status", "")))
            armed = len(seen) == 1
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(consume(), 30))
    finally:
        event.remove(engine, "after_cursor_execute", finish_the_job_now)
    assert seen == [("status", "queued"), ("status", "cancelled"), ("end", "")]


@pytest.mark.parametrize("migrated_settings", ["postgres"], indirect=True)  # SQLite commits in id order (one writer)
def test_an_event_committed_after_a_larger_id_is_still_sent(settings: Settings) -> None:
    factory = db.session_factory(settings)
    engine = db.get_engine(settings)
    with factory() as s:
        tenant = keys.get_or_create_tenant(s, "t")
        job_id = jobs.create(s, tenant_id=tenant.id, dataset_id=None, spec={"dataset_id": "ds_x"}).id
        s.commit()

    def add(message: str) -> None:
        with factory() as s:
            jobs.add_event(s, job_id, "message", message)
            s.commit()

    async def consume() -> list[dict[str, str]]:
        stream = job_event_stream(EventWatch(factory, interval=0.05), job_id, 0)
        seen = [await anext(stream)]  # "job queued"
        with engine.connect() as slow_writer:  # takes its id now, commits later
            slow_writer.execute(
                insert(JobEvent).values(
                    job_id=job_id, kind="message", level="info", message="late", data={}, created_at=utcnow()
                )
            )
            add("early")
            seen.append(await asyncio.wait_for(anext(stream), 10))
            slow_writer.commit()
        with factory() as s:
            jobs.request_cancel(s, s.get(Job, job_id))
            s.commit()
        seen += [m async for m in stream]
        return seen

    seen = asyncio.run(asyncio.wait_for(consume(), 30))
    messages = [json.loads(m["data"]).get("message", m["event"]) for m in seen]
    assert messages == ["job queued", "early", "late", messages[3], "end"] and messages[3] != "late"
    ids = [int(m["id"]) for m in seen if "id" in m]
    assert ids == sorted(ids) and "id" not in seen[2]  # the late one carries no id: resuming stays correct
