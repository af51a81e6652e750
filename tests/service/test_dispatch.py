"""Fair dispatch (saft_service/dispatch.py) on SQLite and on Postgres: turns across tenants, shares, priorities
within a tenant, the window under concurrent dispatchers, the reaper's part, and migration 0009.

The broker is the data dir's SQLite queue (real kombu), which no worker reads; "a worker" here is the test
taking the job the broker holds, claiming it, and dispatching as ``worker.runner.run_job`` does after a claim.
The same rules with a real worker on each stack are in test_scheduling.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, update

from saft_service import db, dispatch, jobs, keys
from saft_service.jobspec import JobSpec
from saft_service.queue import pending_job_ids
from saft_service.reaper import reap_once
from saft_service.settings import Settings
from saft_service.submission import submit_job
from saft_service.tables import Dataset, Job, Tenant, utcnow
from tests.fixtures.stack import scratch_postgres


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One migrated database of each kind for the module; each test has a queue of its own in it."""
    with contextlib.ExitStack() as stack:
        tmp = tmp_path_factory.mktemp(f"dispatch-{request.param}")
        url = stack.enter_context(scratch_postgres("saft_dispatch")) if request.param == "postgres" else None
        s = Settings(data_dir=tmp, database_url=url)
        stack.callback(lambda: db.get_engine(s).dispose())  # before the database is dropped
        db.upgrade(s)
        yield s


@pytest.fixture
def settings(store: Settings) -> Settings:
    return store.model_copy(update={"queue_name": f"q-{secrets.token_hex(4)}"})


def tenant_with_data(settings: Settings, share: float = 1.0) -> tuple[str, str]:
    """A new tenant (with ``share``) and a dataset of its own: (tenant id, dataset id)."""
    with db.session_scope(settings) as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        tenant.share = share
        ds = Dataset(id=f"ds_{secrets.token_hex(6)}", tenant_id=tenant.id, name="d", status="ready", path="datasets/d",
                     num_images=6, classes=["a", "b"], class_names=["a", "b"], counts={"a": 3, "b": 3},
                     size_bytes=1, created_at=utcnow())
        s.add(ds)
        return tenant.id, ds.id


def submit(settings: Settings, tenant: tuple[str, str], priority: str = "normal") -> str:
    with db.session_factory(settings)() as s:
        row = s.get(Tenant, tenant[0])
        assert row is not None
        return submit_job(s, settings, tenant=row, spec=JobSpec(dataset_id=tenant[1], priority=priority)).id


def dispatched(settings: Settings) -> list[str]:
    """Queued jobs dispatched and not yet started, oldest dispatch first."""
    with db.session_factory(settings)() as s:
        return list(s.scalars(select(Job.id).where(Job.status == "queued", dispatch.in_queue(settings.queue_name),
                                                   Job.dispatched_at.is_not(None)).order_by(Job.dispatched_at, Job.id)))


def work(settings: Settings, limit: int = 100) -> list[str]:
    """One worker: take the dispatched job, claim it, dispatch (as the runner does), end it; until none is
    left. Returns the jobs in the order they started."""
    started: list[str] = []
    while (waiting := dispatched(settings)) and len(started) < limit:
        with db.session_scope(settings) as s:
            job = jobs.claim(s, waiting[0], worker="w/1")
            assert job is not None
            attempt = job.attempts
        dispatch.dispatch(settings)
        with db.session_scope(settings) as s:
            assert jobs.fail(s, waiting[0], "test", "ended by the test", attempt=attempt)
        started.append(waiting[0])
    return started


def test_with_one_worker_a_tenants_first_job_starts_after_at_most_one_more_of_anothers(settings: Settings) -> None:
    a, b = tenant_with_data(settings), tenant_with_data(settings)
    a_jobs = [submit(settings, a) for _ in range(4)]
    b_job = submit(settings, b)
    assert dispatched(settings) == a_jobs[:1]  # the window: one message in the broker, the rest in the store
    assert pending_job_ids(settings) == {a_jobs[0]}
    order = work(settings)
    assert sorted(order) == sorted([*a_jobs, b_job])  # every job ran, once
    assert order.index(b_job) < order.index(a_jobs[2]), order
    assert order == [a_jobs[0], b_job, *a_jobs[1:]]  # A's own jobs kept their order


def test_tenants_take_turns_in_proportion_to_their_shares(settings: Settings) -> None:
    heavy, light = tenant_with_data(settings, share=2.0), tenant_with_data(settings)
    h = [submit(settings, heavy) for _ in range(6)]
    l_ = [submit(settings, light) for _ in range(6)]
    order = work(settings, limit=9)
    assert order[0] == h[0]
    assert sum(j in h for j in order) == 6 and sum(j in l_ for j in order) == 3, order  # 2 : 1
    # A tenant that comes back after being idle takes its turn now, without catching up on turns it missed.
    late = tenant_with_data(settings)
    late_jobs = [submit(settings, late) for _ in range(3)]
    nxt = work(settings, limit=4)
    assert nxt[0] in late_jobs or nxt[1] in late_jobs, nxt  # after at most the one already in the broker
    assert sum(j in late_jobs for j in nxt) <= 2, nxt


def test_a_tenants_own_jobs_go_high_then_normal_then_low_then_first_come(settings: Settings) -> None:
    t = tenant_with_data(settings)
    first = submit(settings, t)  # dispatched at once: the window is now full
    low, normal1, high, normal2 = (submit(settings, t, p) for p in ("low", "normal", "high", "normal"))
    assert work(settings) == [first, high, normal1, normal2, low]
    with db.session_factory(settings)() as s:
        assert s.get(Job, high).spec["priority"] == "high"


def test_concurrent_submissions_and_dispatchers_never_exceed_the_window(settings: Settings) -> None:
    settings = settings.model_copy(update={"dispatch_window": 2})
    tenants = [tenant_with_data(settings) for _ in range(3)]

    def burst(i: int) -> str:
        if i % 2:
            dispatch.dispatch(settings)
        return submit(settings, tenants[i % 3])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(burst, range(12)))
    assert len(set(ids)) == 12
    assert len(dispatched(settings)) == 2
    assert len(pending_job_ids(settings) or ()) == 2  # and the broker holds exactly those
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: dispatch.dispatch(settings), range(8)))
    assert len(dispatched(settings)) == 2
    # After the two already in the broker, each tenant gets a turn before any gets another.
    order = work(settings, limit=5)
    with db.session_factory(settings)() as s:
        owners = {s.get(Job, j).tenant_id for j in order[2:]}
    assert len(owners) == 3, order


def test_a_dispatch_whose_message_was_never_sent_is_sent_by_the_reaper(settings: Settings) -> None:
    t = tenant_with_data(settings)
    # A dispatcher that dies between its commit and the message: the row says dispatched, the broker has nothing.
    with db.session_scope(settings) as s:
        job = jobs.create(s, tenant_id=t[0], dataset_id=t[1], spec={"dataset_id": t[1]}, queue=settings.queue_name)
        job_id = job.id
    with db.session_scope(settings) as s:
        assert dispatch.choose(s, settings) == [job_id]
    assert pending_job_ids(settings) == set()
    report = reap_once(settings, now=utcnow() + timedelta(seconds=settings.requeue_after + 1))
    assert report.resent == [job_id] and pending_job_ids(settings) == {job_id}
    # Sent once: the next pass finds it in the broker and sends nothing (a job waiting in the store is not
    # the reaper's to send, it is the dispatcher's, and the window is full).
    later = submit(settings, t)
    report = reap_once(settings, now=utcnow() + timedelta(seconds=settings.requeue_after + 1))
    assert report.resent == [] and report.dispatched == [] and pending_job_ids(settings) == {job_id}
    assert work(settings) == [job_id, later]


def test_a_job_whose_worker_was_lost_waits_for_its_turn_again(settings: Settings) -> None:
    a, b = tenant_with_data(settings), tenant_with_data(settings)
    lost = submit(settings, a)
    with db.session_scope(settings) as s:
        assert jobs.claim(s, lost, worker="w/1") is not None
    dispatch.dispatch(settings)
    a2, b1 = submit(settings, a), submit(settings, b)
    assert dispatched(settings) == [a2]
    with db.session_scope(settings) as s:  # the worker is gone: its heartbeat went stale long ago
        s.execute(update(Job).where(Job.id == lost).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    report = reap_once(settings)
    assert report.requeued == [lost] and report.dispatched == []  # the window is full (a2)
    assert work(settings) == [a2, b1, lost]  # b's turn first, then a's oldest job: the lost one
    with db.session_factory(settings)() as s:
        assert s.get(Job, lost).attempts == 2


def test_a_queues_dispatcher_leaves_other_queues_jobs_alone(settings: Settings) -> None:
    t = tenant_with_data(settings)
    other = settings.model_copy(update={"queue_name": settings.queue_name + "-other"})
    mine, theirs = submit(settings, t), submit(other, t)
    assert dispatched(settings) == [mine] and dispatched(other) == [theirs]  # each queue has its window
    assert pending_job_ids(settings) == {mine} and pending_job_ids(other) == {theirs}
    also_theirs = submit(other, t)
    with db.session_scope(settings) as s:
        assert jobs.claim(s, mine, worker="w/1") is not None  # room in this queue's window
    assert dispatch.dispatch(settings) == []
    with db.session_scope(settings) as s:
        assert s.get(Job, also_theirs).dispatched_at is None
        assert s.get(Job, also_theirs).queue == other.queue_name
        for j in (mine, theirs, also_theirs):  # leave nothing for the next test's reaper to find
            jobs.fail(s, j, "test", "ended by the test")


def test_the_migration_counts_queued_jobs_as_dispatched(migrated_settings: Settings) -> None:
    """Jobs queued before 0009 already have their message in the broker; their tenants get share 1."""
    settings = migrated_settings
    cfg = db.alembic_config(settings)
    rev = next(r for r in ScriptDirectory.from_config(cfg).walk_revisions() if r.path.endswith("_fair_dispatch.py"))
    command.downgrade(cfg, rev.down_revision)
    engine = db.get_engine(settings)
    now = utcnow()
    with engine.begin() as conn:
        table = {n: sa.Table(n, sa.MetaData(), autoload_with=conn) for n in ("tenants", "jobs")}
        assert "dispatched_at" not in table["jobs"].c and "share" not in table["tenants"].c
        conn.execute(table["tenants"].insert(), {"id": "tn_old", "name": "old", "created_at": now})
        old: dict[str, Any] = {"tenant_id": "tn_old", "spec": {"dataset_id": "ds_x"}, "metrics": {}, "step": 0,
                               "total_steps": 0, "cancel_requested": False, "attempts": 0, "created_at": now}
        if "warnings" in table["jobs"].c:  # 0007's column, required since (the schema just before 0009)
            old["warnings"] = []
        conn.execute(table["jobs"].insert(), [
            {**old, "id": "job_sent", "status": "queued", "enqueued_at": now + timedelta(seconds=5)},
            {**old, "id": "job_unsent", "status": "queued", "enqueued_at": None},
            {**old, "id": "job_done", "status": "succeeded", "enqueued_at": None},
        ])
    command.upgrade(cfg, "head")
    with db.session_factory(settings)() as s:
        got = {j.id: j for j in s.scalars(select(Job))}
        assert got["job_sent"].dispatched_at == now + timedelta(seconds=5)
        assert got["job_unsent"].dispatched_at == now  # its message is the reaper's to send, as before
        assert got["job_done"].dispatched_at is None
        assert {j.priority for j in got.values()} == {1} and {j.queue for j in got.values()} == {None}
        tenant = s.get(Tenant, "tn_old")
        assert tenant is not None and tenant.share == 1.0 and tenant.dispatch_start is None
    assert dispatched(settings) == ["job_unsent", "job_sent"]
    command.downgrade(cfg, rev.down_revision)
    command.upgrade(cfg, "head")


def test_saft_tenants_share_shows_and_sets_a_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saft_cli.main import main
    from saft_service.settings import get_settings

    for k in [k for k in os.environ if k.startswith("SAFT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SAFT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["keys", "create", "--tenant", "big"]) == 0
        assert main(["tenants", "share", "big", "2.5"]) == 0
        assert main(["tenants", "share", "big"]) == 0
        assert main(["tenants", "share", "nobody", "2"]) != 0
        out, err = capsys.readouterr()
        assert out.splitlines()[-2:] == ["tenant 'big': share 2.5 (turns in dispatch relative to share-1 tenants)"] * 2
        assert "no tenant 'nobody'" in err
        with pytest.raises(SystemExit):
            main(["tenants", "share", "big", "0"])
        assert "a share is between 0.01 and 100" in capsys.readouterr().err
        with db.session_factory(get_settings())() as s:
            assert s.scalar(select(Tenant.share).where(Tenant.name == "big")) == 2.5
    finally:
        db.get_engine(get_settings()).dispose()
        get_settings.cache_clear()
