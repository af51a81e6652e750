"""fair dispatch: a job's queue, priority and dispatch time; a tenant's share and turn

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-04

Jobs queued before this revision already have their message in the broker: they count as dispatched (at the
time their message was sent), so the dispatcher does not send them again and the reaper still re-sends them if
the broker lost them. Their ``queue`` stays unset: any queue's dispatcher and reaper may handle them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_status_queue", ["status", "queue"], unique=False)
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("share", sa.Float(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("dispatch_start", sa.Float(), nullable=True))
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET dispatched_at = COALESCE(enqueued_at, created_at) WHERE status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("dispatched_at")
        batch.drop_column("dispatch_start")
        batch.drop_column("share")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_queue")
        batch.drop_column("dispatched_at")
        batch.drop_column("priority")
        batch.drop_column("queue")
