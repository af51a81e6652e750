"""The datasets a job uses, as rows: written with the job, backfilled by the migration, queried for "in use".

On SQLite and on Postgres (the same migrations for both).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select
from sqlalchemy.orm import Session

from saft_service import db, jobs, keys
from saft_service.job_datasets import active_job_using
from saft_service.jobspec import JobSpec
from saft_service.settings import Settings
from saft_service.submission import QuotaExceeded, submit_job
from saft_service.tables import Dataset, Job, JobDataset, Tenant, new_id, utcnow
from tests.fixtures.stack import scratch_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings of an empty database of each kind (not migrated); the broker is the data dir's SQLite queue,
    which no worker reads, so submitted jobs stay queued."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, max_active_jobs=2)
        return
    with scratch_postgres("saft_jd") as url:
        s = Settings(data_dir=tmp_path, database_url=url, max_active_jobs=2)
        try:
            yield s
        finally:
            db.get_engine(s).dispose()


@pytest.fixture
def settings(empty_db: Settings) -> Settings:
    db.upgrade(empty_db)
    return empty_db


def add_dataset(session: Session, tenant: Tenant, name: str) -> Dataset:
    ds = Dataset(
        id=f"ds_{name}_{secrets.token_hex(4)}", tenant_id=tenant.id, name=name, status="ready", path=f"datasets/{name}",
        num_images=6, classes=["a", "b"], class_names=["a", "b"], counts={"a": 3, "b": 3}, size_bytes=1,
        created_at=utcnow(),
    )
    session.add(ds)
    session.flush()
    return ds


def insert_old(session: Session, table: type[Any], **values: Any) -> Any:
    """Insert a row of ``table`` into a schema older than this code's tables: only ``values``' columns, which
    existed then. Returns the row as this code's class (not added to the session)."""
    old = sa.table(table.__tablename__, *(sa.column(k, table.__table__.c[k].type) for k in values))
    session.execute(sa.insert(old).values(**values))
    return table(**values)


def add_old_dataset(session: Session, tenant: Tenant, name: str) -> Dataset:
    """``add_dataset`` for a schema older than this code's tables."""
    return insert_old(
        session, Dataset, id=f"ds_{name}_{secrets.token_hex(4)}", tenant_id=tenant.id, name=name, status="ready",
        path=f"datasets/{name}", num_images=6, classes=["a", "b"], class_names=["a", "b"], counts={"a": 3, "b": 3},
        size_bytes=1, created_at=utcnow(),
    )


def add_old_job(session: Session, tenant: Tenant, spec: dict[str, Any]) -> Job:
    """A queued job as an older version stored it (``jobs.create``'s columns of that schema)."""
    return insert_old(
        session, Job, id=new_id("job"), tenant_id=tenant.id, dataset_id=None, status="queued", spec=spec,
        metrics={}, step=0, total_steps=0, attempts=0, cancel_requested=False, created_at=utcnow(),
    )


def rows(session: Session, job_id: str) -> set[tuple[str, str, str | None]]:
    stmt = select(JobDataset.dataset_id, JobDataset.role, JobDataset.eval_name).where(JobDataset.job_id == job_id)
    return {tuple(r) for r in session.execute(stmt)}


def test_the_migration_backfills_the_rows_of_existing_jobs(empty_db: Settings) -> None:
    cfg = db.alembic_config(empty_db)
    command.upgrade(cfg, "0003")  # the schema before this table existed, with jobs an older version stored
    with db.session_factory(empty_db)() as s:
        tenant = insert_old(s, Tenant, id=new_id("ten"), name="old", created_at=utcnow())
        train, shifted, sketch = (add_old_dataset(s, tenant, n) for n in ("train", "shifted", "sketch"))
        specs: dict[str, dict[str, Any]] = {
            "both": {"dataset_id": train.id, "eval_dataset_ids": [shifted.id, sketch.id]},
            "train-only": {"dataset_id": shifted.id},  # written before eval_dataset_ids had a default in specs
            "gone": {"dataset_id": "ds_deleted_since", "eval_dataset_ids": [sketch.id, "ds_also_deleted"]},
        }
        job_ids = {}
        for label, spec in specs.items():
            job_ids[label] = add_old_job(s, tenant, spec).id
        s.commit()

    command.upgrade(cfg, "head")
    with db.session_factory(empty_db)() as s:
        assert rows(s, job_ids["both"]) == {
            (train.id, "train", None), (shifted.id, "eval", shifted.id), (sketch.id, "eval", sketch.id)
        }
        assert rows(s, job_ids["train-only"]) == {(shifted.id, "train", None)}
        assert rows(s, job_ids["gone"]) == {(sketch.id, "eval", sketch.id)}  # deleted datasets get no row
        assert active_job_using(s, sketch.id) is not None  # queued jobs: in use from the first query on

    command.downgrade(cfg, "0003")
    command.upgrade(cfg, "head")  # and back: the backfill runs again on the same rows
    with db.session_factory(empty_db)() as s:
        assert len(rows(s, job_ids["both"])) == 3


def test_a_submitted_job_records_its_datasets_and_holds_them_while_active(settings: Settings) -> None:
    with db.session_factory(settings)() as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        train, shifted, idle = (add_dataset(s, tenant, n) for n in ("train", "shifted", "idle"))
        s.commit()
        spec = JobSpec(dataset_id=train.id, eval_dataset_ids=[shifted.id])
        job = submit_job(s, settings, tenant=tenant, spec=spec)
        assert job.status == "queued"
        assert rows(s, job.id) == {(train.id, "train", None), (shifted.id, "eval", shifted.id)}
        assert [j.id for j in (active_job_using(s, train.id), active_job_using(s, shifted.id))] == [job.id] * 2
        assert active_job_using(s, idle.id) is None

        jobs.request_cancel(s, job)  # queued: cancelled at once
        s.commit()
        assert active_job_using(s, shifted.id) is None  # a finished job holds nothing
        assert rows(s, job.id)  # though the rows stay, with the job


def test_a_refused_submission_records_nothing(settings: Settings) -> None:
    with db.session_factory(settings)() as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        train = add_dataset(s, tenant, "train")
        s.commit()
        spec = JobSpec(dataset_id=train.id)
        first = [submit_job(s, settings, tenant=tenant, spec=spec) for _ in range(settings.max_active_jobs)]
        with pytest.raises(QuotaExceeded):
            submit_job(s, settings, tenant=tenant, spec=spec)
        stored = s.scalars(select(JobDataset.job_id).where(JobDataset.dataset_id == train.id)).all()
        assert sorted(stored) == sorted(j.id for j in first)


def test_another_tenants_jobs_do_not_hold_a_dataset_they_do_not_name(settings: Settings) -> None:
    with db.session_factory(settings)() as s:
        alpha = keys.get_or_create_tenant(s, f"a-{secrets.token_hex(3)}")
        beta = keys.get_or_create_tenant(s, f"b-{secrets.token_hex(3)}")
        mine, theirs = add_dataset(s, alpha, "mine"), add_dataset(s, beta, "theirs")
        s.commit()
        submit_job(s, settings, tenant=beta, spec=JobSpec(dataset_id=theirs.id))
        assert active_job_using(s, mine.id) is None
        assert active_job_using(s, theirs.id) is not None
