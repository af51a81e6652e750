"""training health: the warnings of a job (loss diverged, at chance, worse than zero-shot, alpha 0)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Jobs stored before this revision were not checked: their list of warnings is empty.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("warnings", sa.JSON(), nullable=True))
    op.execute("UPDATE jobs SET warnings = '[]'")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("warnings", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    # the warning events stay: they are rows of job_events, which the older schema reads as any other event
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("warnings")
