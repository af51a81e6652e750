"""job datasets: which datasets each job trains and evaluates on, as rows

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Backfilled from the existing jobs' specs (``dataset_id``: train; ``eval_dataset_ids``: eval, recorded under
the dataset id). A dataset that a finished job named but that has since been deleted gets no row, as it would
have lost it by the foreign key's cascade. The spec's reading is written out here, not imported, so that this
migration keeps doing what it did when the service's code moves on.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    job_datasets = op.create_table(
        "job_datasets",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("eval_name", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_job_datasets_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_datasets_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "dataset_id", "role", name=op.f("pk_job_datasets")),
    )
    with op.batch_alter_table("job_datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_datasets_dataset_id"), ["dataset_id"], unique=False)
    rows = list(_backfill_rows(op.get_bind()))
    if rows:
        op.bulk_insert(job_datasets, rows)


def _backfill_rows(conn: sa.Connection) -> Iterator[dict[str, Any]]:
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    datasets = sa.table("datasets", sa.column("id", sa.String))
    existing = set(conn.execute(sa.select(datasets.c.id)).scalars())
    for job_id, spec in conn.execute(sa.select(jobs.c.id, jobs.c.spec)):
        spec = spec or {}
        train = spec.get("dataset_id")
        if train in existing:
            yield {"job_id": job_id, "dataset_id": train, "role": "train", "eval_name": None}
        for eval_id in dict.fromkeys(spec.get("eval_dataset_ids") or []):
            if eval_id in existing:
                yield {"job_id": job_id, "dataset_id": eval_id, "role": "eval", "eval_name": eval_id}


def downgrade() -> None:
    with op.batch_alter_table("job_datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_datasets_dataset_id"))
    op.drop_table("job_datasets")
