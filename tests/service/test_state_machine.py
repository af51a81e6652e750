"""The job state machine and the migrations, on SQLite and on Postgres (the same migrations for both)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

from saft_service import db, jobs, keys, webhooks
from saft_service.settings import Settings
from saft_service.tables import Base, Checkpoint, Job, JobEvent, WebhookDelivery, WebhookEndpoint, utcnow


@pytest.fixture
def settings(migrated_settings: Settings) -> Settings:
    return migrated_settings


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    with db.session_factory(settings)() as s:
        yield s


def new_job(session: Session) -> Job:
    tenant = keys.get_or_create_tenant(session, f"t-{secrets.token_hex(3)}")
    job = jobs.create(session, tenant_id=tenant.id, dataset_id=None, spec={"dataset_id": "ds_x"})
    session.commit()
    return job


def events(session: Session, job_id: str) -> list[str]:
    return [e.message for e in session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]


def test_migrations_match_the_tables(settings: Settings) -> None:
    with db.get_engine(settings).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_the_frontier_migration_backfills_the_two_ends(settings: Settings) -> None:
    """Evaluations stored before alphas existed become alpha 0 (zero-shot) and 1 (fine-tuned); their checkpoints
    recommend nothing. Down again, the rows between the ends go (the old schema has no place for them)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = db.alembic_config(settings)
    frontier = next(r for r in ScriptDirectory.from_config(cfg).walk_revisions() if r.path.endswith("_alpha_frontier.py"))
    command.downgrade(cfg, frontier.down_revision)
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        table = {n: sa.Table(n, sa.MetaData(), autoload_with=conn) for n in ("tenants", "jobs", "checkpoints", "evaluations")}
        assert "alpha" not in table["evaluations"].c and "recommended_alpha" not in table["checkpoints"].c
        now = utcnow()
        conn.execute(table["tenants"].insert(), {"id": "tn_old", "name": "old", "created_at": now})
        conn.execute(table["jobs"].insert(), {
            "id": "job_old", "tenant_id": "tn_old", "status": "succeeded", "step": 2, "total_steps": 2,
            "spec": {"dataset_id": "ds_x"}, "metrics": {}, "cancel_requested": False, "attempts": 1, "created_at": now,
        })
        conn.execute(table["checkpoints"].insert(), {
            "job_id": "job_old", "path": "jobs/job_old/checkpoint.safetensors", "sha256": "0" * 64, "size_bytes": 1,
            "base_model": "saft-tiny", "base_sha256": "1" * 64, "classes": ["a", "b"], "created_at": now,
        })
        conn.execute(table["evaluations"].insert(), [
            {"job_id": "job_old", "dataset": d, "model": m, "top1": 0.5, "top5": 1.0, "n": 6, "num_classes": 2}
            for d in ("validation", "ds_y") for m in ("fine-tuned", "zero-shot")
        ])
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT dataset, model, alpha FROM evaluations ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("validation", "fine-tuned", 1.0), ("validation", "zero-shot", 0.0),
                                            ("ds_y", "fine-tuned", 1.0), ("ds_y", "zero-shot", 0.0)]
        ckpt = conn.execute(sa.text("SELECT recommended_alpha, alpha_rule FROM checkpoints")).one()
        assert tuple(ckpt) == (None, None)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO evaluations (job_id, dataset, model, alpha, top1, top5, n, num_classes) "
                             "VALUES ('job_old', 'ds_y', 'interpolated', 0.5, 0.5, 1.0, 6, 2)"))
    command.downgrade(cfg, frontier.down_revision)
    with engine.connect() as conn:
        models = conn.execute(sa.text("SELECT model FROM evaluations")).scalars().all()
        assert sorted(models) == ["fine-tuned", "fine-tuned", "zero-shot", "zero-shot"]
    command.upgrade(cfg, "head")


def test_the_warnings_migration_gives_older_jobs_none(settings: Settings) -> None:
    """Jobs stored before training health have an empty list of warnings; down again, the column goes and the
    warning events stay (plain event rows)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = db.alembic_config(settings)
    health = next(r for r in ScriptDirectory.from_config(cfg).walk_revisions() if r.path.endswith("_job_warnings.py"))
    command.downgrade(cfg, health.down_revision)
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        table = {n: sa.Table(n, sa.MetaData(), autoload_with=conn) for n in ("tenants", "jobs", "job_events")}
        assert "warnings" not in table["jobs"].c
        now = utcnow()
        conn.execute(table["tenants"].insert(), {"id": "tn_old", "name": "old", "created_at": now})
        conn.execute(table["jobs"].insert(), {
            "id": "job_old", "tenant_id": "tn_old", "status": "succeeded", "step": 2, "total_steps": 2,
            "spec": {"dataset_id": "ds_x"}, "metrics": {}, "cancel_requested": False, "attempts": 1, "created_at": now,
        })
    command.upgrade(cfg, "head")
    with db.session_factory(settings)() as s:
        old = s.get(Job, "job_old")
        assert old is not None and old.warnings == []
        warning = {"code": "loss_at_chance", "message": "m", "hint": "h", "final_loss": 1.1}
        s.execute(sa.update(Job).where(Job.id == "job_old").values(warnings=[warning]))
        jobs.add_event(s, "job_old", "warning", "m", level="warning", data={"code": "loss_at_chance"})
        s.commit()
        s.expire_all()
        assert s.get(Job, "job_old").warnings == [warning]
    command.downgrade(cfg, health.down_revision)
    with engine.connect() as conn:
        assert "warnings" not in {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        assert conn.execute(sa.text("SELECT kind FROM job_events WHERE job_id = 'job_old'")).scalars().all() == ["warning"]
    command.upgrade(cfg, "head")


def test_a_succeeded_job_with_warnings_stores_them_and_writes_an_event_each(session: Session) -> None:
    job = new_job(session)
    assert jobs.claim(session, job.id, worker="w1") is not None
    hook = WebhookEndpoint(tenant_id=job.tenant_id, url="http://127.0.0.1:9/h", events=["job.warning"],
                           secret=webhooks.new_secret())
    session.add(hook)
    session.commit()
    warnings = [
        {"code": "loss_diverged", "message": "the loss rose", "hint": "lower the lr", "first_loss": 0.2},
        {"code": "recommended_alpha_zero", "message": "alpha 0", "hint": "more data", "recommended_alpha": 0.0},
    ]
    ckpt = Checkpoint(job_id=job.id, path="x", sha256="0" * 64, size_bytes=1, base_model="saft-tiny",
                      base_sha256="1" * 64, classes=["a", "b"], created_at=utcnow())
    assert jobs.succeed(session, job.id, metrics={"k": 1.0}, checkpoint=ckpt, mask=None, evaluations=[],
                        warnings=warnings, attempt=1)
    session.commit()
    session.refresh(job)
    assert job.status == "succeeded" and job.warnings == warnings
    rows = session.query(JobEvent).filter_by(job_id=job.id).order_by(JobEvent.id).all()
    shown = [(e.kind, e.level, e.message, e.data) for e in rows if e.kind == "warning"]
    assert shown == [
        ("warning", "warning", "the loss rose", {"code": "loss_diverged", "hint": "lower the lr", "first_loss": 0.2}),
        ("warning", "warning", "alpha 0",
         {"code": "recommended_alpha_zero", "hint": "more data", "recommended_alpha": 0.0}),
    ]
    assert rows[-1].kind == "status" and rows[-1].data == {"status": "succeeded"}  # the stream still ends on it
    # one job.warning webhook delivery with the warnings, in the same transaction
    [delivery] = session.query(WebhookDelivery).filter_by(endpoint_id=hook.id).all()
    body = json.loads(delivery.payload)
    assert delivery.event_type == body["type"] == "job.warning" and body["data"]["status"] == "succeeded"
    assert [(w["code"], w["hint"]) for w in body["data"]["warnings"]] == [
        ("loss_diverged", "lower the lr"), ("recommended_alpha_zero", "more data")]


def test_happy_path_queued_running_succeeded(session: Session) -> None:
    job = new_job(session)
    assert job.status == "queued"
    claimed = jobs.claim(session, job.id, worker="w1")
    session.commit()
    assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
    assert claimed.started_at is not None
    jobs.set_stage(session, job.id, "training")
    jobs.report_progress(session, job.id, stage="training", step=3, total=10, metrics={"train_loss": 0.5})
    session.commit()
    session.refresh(job)
    assert (job.stage, job.step, job.total_steps, job.metrics) == ("training", 3, 10, {"train_loss": 0.5})
    assert jobs.fail(session, job.id, "x", "y")  # running -> failed is allowed ...
    session.commit()
    assert not jobs.claim(session, job.id, worker="w2")  # ... and final: nothing restarts it
    assert events(session, job.id)[:3] == ["job queued", "job started", "stage training"]


def test_a_duplicate_message_does_not_run_a_job_twice(session: Session) -> None:
    job = new_job(session)
    assert jobs.claim(session, job.id, worker="w1") is not None
    session.commit()
    assert jobs.claim(session, job.id, worker="w2") is None  # live heartbeat, not redelivered
    session.refresh(job)
    assert job.worker == "w1" and job.attempts == 1


def test_a_redelivery_alone_does_not_restart_a_live_job(session: Session) -> None:
    """Brokers also redeliver when a live worker's connection drops: the heartbeat decides, not the flag."""
    job = new_job(session)
    jobs.claim(session, job.id, worker=f"saft@h/{os.getpid()}")  # this process: alive
    session.commit()
    assert jobs.claim(session, job.id, worker="saft@h/1", redelivered=True) is None
    session.refresh(job)
    assert job.attempts == 1 and job.worker == f"saft@h/{os.getpid()}"


def test_a_redelivered_job_whose_process_died_restarts_then_fails_as_worker_lost(session: Session) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    job = new_job(session)
    jobs.claim(session, job.id, worker=f"saft@h/{dead.pid}", max_attempts=2)
    session.commit()
    again = jobs.claim(session, job.id, worker=f"saft@h/{os.getpid()}", redelivered=True, max_attempts=2)
    session.commit()
    assert again is not None and again.attempts == 2 and again.worker == f"saft@h/{os.getpid()}"
    # Another node cannot tell whether the process lives: only a stale heartbeat lets it take over.
    assert jobs.claim(session, job.id, worker="saft@other/1", redelivered=True, max_attempts=2) is None
    job.heartbeat_at = utcnow() - timedelta(seconds=600)
    session.commit()
    assert jobs.claim(session, job.id, worker="saft@other/1", max_attempts=2, heartbeat_timeout=60) is None
    session.commit()
    session.refresh(job)
    assert job.status == "failed" and job.error_code == "worker_lost"
    assert "lost 2 times" in (job.error_message or "")


def test_writes_of_a_lost_attempt_are_fenced_off(session: Session) -> None:
    """Attempt 1 stalls, the reaper requeues the job, attempt 2 claims it: attempt 1 can change nothing."""
    job = new_job(session)
    first = jobs.claim(session, job.id, worker="saft@a/1")
    session.commit()
    assert first is not None and first.attempts == 1
    assert jobs.heartbeat(session, job.id, 1)
    assert jobs.requeue(session, first, "no heartbeat for 90 s")
    session.commit()
    session.refresh(job)
    assert job.status == "queued" and job.attempts == 1
    assert not jobs.heartbeat(session, job.id, 1)  # the old process learns it lost the job
    second = jobs.claim(session, job.id, worker="saft@b/2")
    session.commit()
    assert second is not None and second.attempts == 2
    assert not jobs.heartbeat(session, job.id, 1)
    assert not jobs.set_stage(session, job.id, "training", attempt=1)
    assert not jobs.report_progress(session, job.id, stage="training", step=5, total=9, attempt=1)
    assert not jobs.fail(session, job.id, "internal_error", "late", attempt=1)
    assert not jobs.mark_cancelled(session, job.id, attempt=1)
    assert not jobs.add_message(session, job.id, "info", "a late note of attempt 1", attempt=1)
    assert jobs.add_message(session, job.id, "info", "a note of attempt 2", attempt=2)
    assert jobs.set_stage(session, job.id, "training", attempt=2)
    session.commit()
    session.refresh(job)
    assert (job.status, job.attempts, job.stage, job.step) == ("running", 2, "training", 0)
    assert "job resumed (attempt 2 of 3)" in events(session, job.id)
    assert "a note of attempt 2" in events(session, job.id)
    assert "a late note of attempt 1" not in events(session, job.id)


def test_cancelling_a_job_whose_worker_is_gone_is_immediate(session: Session) -> None:
    job = new_job(session)
    jobs.claim(session, job.id, worker="saft@a/1")
    job.heartbeat_at = utcnow() - timedelta(seconds=600)
    session.commit()
    jobs.request_cancel(session, job, heartbeat_timeout=60)
    session.commit()
    session.refresh(job)
    assert job.status == "cancelled" and jobs.is_terminal(job.status)


def test_a_silent_running_job_counts_as_lost(session: Session) -> None:
    job = new_job(session)
    jobs.claim(session, job.id, worker="w1")
    job.heartbeat_at = utcnow() - timedelta(seconds=600)
    session.commit()
    assert jobs.claim(session, job.id, worker="w2", heartbeat_timeout=300) is not None


def test_cancel_queued_is_immediate_and_wins_over_a_later_claim(session: Session) -> None:
    job = new_job(session)
    jobs.request_cancel(session, job)
    session.commit()
    assert job.status == "cancelled" and job.finished_at is not None
    assert jobs.claim(session, job.id, worker="w1") is None
    session.refresh(job)
    assert job.status == "cancelled" and job.started_at is None


def test_cancel_running_is_cooperative(session: Session) -> None:
    job = new_job(session)
    jobs.claim(session, job.id, worker="w1")
    session.commit()
    assert not jobs.cancel_requested(session, job.id)
    jobs.request_cancel(session, job)
    session.commit()
    assert job.status == "running" and jobs.cancel_requested(session, job.id)
    assert jobs.mark_cancelled(session, job.id)
    session.commit()
    session.refresh(job)
    assert job.status == "cancelled"
    with pytest.raises(jobs.IllegalTransition):
        jobs.request_cancel(session, job)


def test_finished_jobs_cannot_change(session: Session) -> None:
    job = new_job(session)
    jobs.request_cancel(session, job)
    session.commit()
    assert not jobs.fail(session, job.id, "late", "too late")
    assert not jobs.mark_cancelled(session, job.id)
    session.commit()
    session.refresh(job)
    assert job.status == "cancelled" and job.error_code is None


# The job life of the design, written here on its own and not read from jobs.TRANSITIONS: queued -> running ->
# succeeded | failed | cancelled; a queued job can also be cancelled or fail (worker lost), a running one can go
# back to the queue (reaper) or start again (redelivery after its process died). Nothing leaves an end state.
JOB_LIFE: dict[str, set[str]] = {
    "queued": {"running", "failed", "cancelled"},
    "running": {"queued", "running", "succeeded", "failed", "cancelled"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}


def test_the_state_machine_refuses_an_edge_its_table_does_not_have(session: Session) -> None:
    """Every move the design does not have is refused and leaves the row as it was; every move it has is taken.
    Widening the table (say cancelled -> queued) fails here, as does narrowing it."""
    for source, targets in JOB_LIFE.items():
        for target in jobs.JobStatus:
            job = new_job(session)
            job.status = source  # put the row in the state under test directly: the move is what is tested
            session.commit()
            sources = [jobs.JobStatus(source)]
            if target.value in targets:
                assert jobs._transition(session, job.id, target, sources), f"{source} -> {target.value}"
                session.commit()
                session.refresh(job)
                assert job.status == target.value
                continue
            with pytest.raises(jobs.IllegalTransition, match=f"is {source}; it cannot become {target.value}"):
                jobs._transition(session, job.id, target, sources)
            session.rollback()
            session.refresh(job)
            assert job.status == source, f"{source} -> {target.value} changed the row"


def test_writers_refuse_jobs_in_the_wrong_state(session: Session) -> None:
    """The public writers check the row's state as well: none moves a job its source list does not name."""
    job = new_job(session)
    jobs.request_cancel(session, job)
    session.commit()
    assert not jobs.requeue(session, job, "test")  # running -> queued is an edge, but the job is not running
    assert not jobs.fail(session, job.id, "x", "y")
    assert jobs.claim(session, job.id, worker="w1") is None
    session.refresh(job)
    assert job.status == "cancelled"
