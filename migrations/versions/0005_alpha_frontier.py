"""the robustness frontier: an alpha per evaluation, a recommended alpha per checkpoint

Rows written before this revision are the two ends of the frontier: zero-shot is alpha 0, fine-tuned alpha 1.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("alpha", sa.Float(), nullable=True))
    op.execute("UPDATE evaluations SET alpha = CASE WHEN model = 'zero-shot' THEN 0.0 ELSE 1.0 END")
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("alpha", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("recommended_alpha", sa.Float(), nullable=True))
        batch.add_column(sa.Column("alpha_rule", sa.String(length=50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("alpha_rule")
        batch.drop_column("recommended_alpha")
    # rows between the ends have no place in the old schema
    op.execute("DELETE FROM evaluations WHERE model NOT IN ('zero-shot', 'fine-tuned')")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("alpha")
