"""multipart uploads and their parts; datasets registered in place (external)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Datasets written before this revision were all uploaded: ``external`` is false for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("external", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("parts_total", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_uploads_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    with op.batch_alter_table("uploads") as batch:
        batch.create_index(batch.f("ix_uploads_tenant_id"), ["tenant_id"], unique=False)
        batch.create_index(batch.f("ix_uploads_expires_at"), ["expires_at"], unique=False)
        batch.create_index("ix_uploads_tenant_created", ["tenant_id", "created_at", "id"], unique=False)
    op.create_table(
        "upload_parts",
        sa.Column("upload_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_id"], ["uploads.id"], name=op.f("fk_upload_parts_upload_id_uploads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("upload_id", "number", name=op.f("pk_upload_parts")),
    )


def downgrade() -> None:
    op.drop_table("upload_parts")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_index("ix_uploads_tenant_created")
        batch.drop_index(batch.f("ix_uploads_expires_at"))
        batch.drop_index(batch.f("ix_uploads_tenant_id"))
    op.drop_table("uploads")
    # datasets registered in place have no meaning in the old schema (their path is not under the data dir)
    op.execute("DELETE FROM datasets WHERE external")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("external")
