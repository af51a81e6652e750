"""The store's tables (SQLAlchemy 2). One schema for Postgres and SQLite; ``migrations/`` creates it.

Everything a user can see belongs to a tenant. Paths of files are stored relative to the data dir, so the
directory can move. Ids are short prefixed random strings (``ds_...``, ``job_...``) users can read.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations are the same on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random id such as ``job_3f9a...`` (96 bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use saft_service.tables.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# A 64-bit autoincrement key on Postgres; SQLite only autoincrements INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Fair dispatch (saft_service/dispatch.py): the tenant's weight, and where its turn stands.
    share: Mapped[float] = mapped_column(Float, default=1.0)
    dispatch_start: Mapped[float | None] = mapped_column(Float, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the key (keys are 256-bit random, so no salt or KDF is needed)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    tenant: Mapped[Tenant] = relationship()


class Dataset(Base):
    """An ImageFolder, verified: uploaded and extracted under ``path`` (relative to the data dir), or, when
    ``external``, registered in place where it already was on the server (``path`` absolute, under one of the
    operator's import roots; its files are the operator's and never deleted by the service)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="ready")
    path: Mapped[str] = mapped_column(String(500))
    num_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    counts: Mapped[dict[str, int]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)


class Upload(Base):
    """A multipart upload in flight: a file of ``size_bytes`` sent in ``parts_total`` parts of ``part_size``
    (the last shorter), stored under ``<data dir>/uploads/<id>/``. Completing it makes a dataset and deletes
    the row; the reaper deletes it after ``expires_at``. Its declared size counts against the tenant's quota
    from the moment it is created."""

    __tablename__ = "uploads"

    PENDING = "pending"
    COMPLETING = "completing"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("upl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    part_size: Mapped[int] = mapped_column(BigInteger)
    parts_total: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    parts: Mapped[list[UploadPart]] = relationship(
        order_by="UploadPart.number", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    __table_args__ = (Index("ix_uploads_tenant_created", "tenant_id", "created_at", "id"),)

    def part_bytes(self, number: int) -> int:
        """The size part ``number`` (1-based) must have."""
        return self.part_size if number < self.parts_total else self.size_bytes - self.part_size * (number - 1)


class UploadPart(Base):
    """A part received and stored (``<n>.part`` in the upload's folder), with its SHA-256."""

    __tablename__ = "upload_parts"

    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """A fine-tuning job. The row is the truth; only ``saft_service.jobs`` changes ``status`` and ``stage``."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    stage: Mapped[str | None] = mapped_column(String(20), nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # What went wrong in training though the job succeeded: ``saft_core.health.TrainingWarning.to_dict()`` each
    # (code, message, hint, numbers); written with the success, in the same transaction as its warning events.
    warnings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When the job's message was last handed to the broker (None: never, e.g. an API that died before it).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Fair dispatch (saft_service/dispatch.py): the queue the job is for (None: any), its priority within its
    # tenant (0 low, 1 normal, 2 high), and when it was chosen to go to the broker (None: it waits in the store).
    queue: Mapped[str | None] = mapped_column(String(200), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=1)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    # Deleting a job deletes its child rows in the database (ON DELETE CASCADE); passive_deletes keeps the ORM
    # from nulling the checkpoint's key first.
    checkpoint: Mapped[Checkpoint | None] = relationship(
        back_populates="job", uselist=False, lazy="selectin", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_queue", "status", "queue"),
    )


class JobDataset(Base):
    """A dataset a job trains or evaluates on, written in the job's own transaction, so that "is this dataset in
    use?" is a query on this table instead of a read of every job's spec. ``eval_name``: the name an eval set's
    evaluations are recorded under (``Evaluation.dataset``); None for the training set."""

    __tablename__ = "job_datasets"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(10), primary_key=True)  # TRAIN or EVAL
    eval_name: Mapped[str | None] = mapped_column(String(200), nullable=True)

    TRAIN = "train"
    EVAL = "eval"


class JobEvent(Base):
    """Something that happened to a job: a status or stage change, progress, a message, metrics, an error."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)


class Mask(Base):
    """What SAFT selected for a job: the summary and the mask file (one row per job)."""

    __tablename__ = "masks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    ratio: Mapped[float] = mapped_column(Float)
    k: Mapped[int] = mapped_column(BigInteger)
    num_eligible: Mapped[int] = mapped_column(BigInteger)
    num_params: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str | None] = mapped_column(String(500), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    tensors: Mapped[list[MaskTensor]] = relationship(
        order_by="MaskTensor.position", cascade="all, delete-orphan", lazy="selectin"
    )


class MaskTensor(Base):
    """Per-tensor counts of a mask: how many of a parameter's entries SAFT selected."""

    __tablename__ = "mask_tensors"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("masks.job_id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(300))
    numel: Mapped[int] = mapped_column(BigInteger)
    selected: Mapped[int] = mapped_column(BigInteger)


class Checkpoint(Base):
    """The sparse-delta safetensors file a succeeded job produced."""

    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(200))
    pretrained: Mapped[str | None] = mapped_column(String(500), nullable=True)
    base_sha256: Mapped[str] = mapped_column(String(64))
    classes: Mapped[list[str]] = mapped_column(JSON)
    # the alpha the job recommends and the rule that chose it (saft_core.frontier); null without a validation split
    recommended_alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    alpha_rule: Mapped[str | None] = mapped_column(String(50), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoint")


class Evaluation(Base):
    """Accuracy of the model at ``alpha`` (0 zero-shot, 1 fine-tuned, between interpolated) on one dataset
    ("validation" or an eval dataset id)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    dataset: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(20))
    alpha: Mapped[float] = mapped_column(Float)
    top1: Mapped[float] = mapped_column(Float)
    top5: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)


class IdempotencyKey(Base):
    """The first answer to a request sent with an ``Idempotency-Key`` (per tenant), replayed to its retries.

    ``state`` is ``processing`` while the first request runs (held by ``token``, so only its owner can finish
    or release it) and ``done`` once ``status``/``body`` hold its answer. Rows are purged after ``expires_at``.
    """

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200))  # "POST /v1/jobs": a key names one request
    token: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="processing")
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)  # SHA-256 of the request body
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class WebhookEndpoint(Base):
    """A URL a tenant registered to be told about its jobs (``saft_service.webhooks``). ``secret`` signs the
    deliveries (``whsec_`` + base64); after a rotation ``previous_secret`` also signs until ``previous_until``,
    so receivers can switch without missing a delivery."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(200))
    previous_secret: Mapped[str | None] = mapped_column(String(200), nullable=True)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),)


class WebhookDelivery(Base):
    """One message to one endpoint, written in the transaction of the job change it tells of. Its ``id`` is the
    ``webhook-id`` of every attempt, so a receiver can drop a message it already handled. ``status``: pending
    (``next_attempt_at`` says when), delivered, or failed (retries exhausted). A sender holds a row while
    ``lease_until`` is in the future (``lease_token`` names it), so two senders never send the same attempt."""

    __tablename__ = "webhook_deliveries"

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(50))
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    payload: Mapped[str] = mapped_column(Text)  # the exact body sent (and signed) on every attempt
    status: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    attempt_rows: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.number", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
    )


class WebhookAttempt(Base):
    """One try at sending a delivery: what the receiver answered (``status_code``) or why nothing came back
    (``error``), and how long it took."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
