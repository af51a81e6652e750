"""The one settings object of the service. Every value comes from an environment variable ``SAFT_<NAME>``.

With neither ``SAFT_DATABASE_URL`` nor ``SAFT_BROKER_URL`` set, the service runs on the *embedded default*:
SQLite for the store and for the job queue (kombu's SQLAlchemy transport), both under ``SAFT_DATA_DIR``, so it needs no other server.
Point the two variables at Postgres and Redis for production.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .logs import LogFormat

MiB = 1024 * 1024
GiB = 1024 * MiB


class Settings(BaseSettings):
    """Service configuration. Sizes in bytes, times in seconds."""

    model_config = SettingsConfigDict(env_prefix="SAFT_", extra="ignore")

    data_dir: Path = Field(
        Path("./var"), description="Datasets, checkpoints and the embedded database/broker."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL (e.g. postgresql+psycopg://user:pass@host:5432/saft); unset: SQLite in the "
        "data dir."
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL (e.g. redis://host:6379/0; run Redis with persistence); unset: a SQLite "
        "queue in the data dir."
    )
    queue_name: str = Field(
        "saft-jobs", description="Celery queue the API sends jobs to and workers consume."
    )

    # Uploads and archives.
    max_upload_bytes: int = Field(512 * MiB, ge=1, description="Largest dataset upload (the whole request).")
    max_extracted_bytes: int = Field(
        2048 * MiB, ge=1, description="Largest total size of an extracted archive, counted while writing (a multipart "
        "upload's: this or 4x the archive, the larger)."
    )
    max_archive_members: int = Field(100_000, ge=1, description="Most entries an uploaded archive may hold.")
    # Multipart, resumable uploads (POST /v1/uploads, then a PUT per part, then complete).
    upload_part_bytes: int = Field(
        16 * MiB, ge=1, description="Part size of a multipart upload (larger when a file needs more parts than "
        "SAFT_MAX_UPLOAD_PARTS)."
    )
    max_upload_parts: int = Field(10_000, ge=1, description="Most parts of one multipart upload.")
    max_multipart_bytes: int = Field(
        256 * GiB, ge=1, description="Largest file a multipart upload may declare."
    )
    upload_ttl: int = Field(
        24 * 3600, ge=60, description="Seconds an incomplete multipart upload is kept; then the reaper removes it."
    )
    # Storage per tenant, and datasets already on the server.
    tenant_storage_bytes: int | None = Field(
        None, ge=0, description="Bytes each tenant may store (datasets, uploads in flight, job outputs); "
        "unset: no quota. Past it: 413 storage_quota_exceeded."
    )
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders under which datasets already on the server may be registered in place "
        "(a JSON list or paths separated by ':'); unset: imports are refused.",
    )
    # Other requests, and jobs in flight per tenant.
    max_request_bytes: int = Field(
        64 * MiB, ge=1, description="Largest body of any other request (classify)."
    )
    max_classify_images: int = Field(64, ge=1, description="Most images in one classify request.")
    request_body_timeout: float = Field(
        60.0, gt=0, description="Seconds the API waits for the next bytes of a request body; a body that stops "
        "arriving answers 408 request_timeout and its connection closes (a slow but steady upload goes on)."
    )
    max_active_jobs: int = Field(
        20, ge=1, description="Most queued and running jobs one tenant may have; more answer 429 too_many_active_jobs "
        "with Retry-After (checked under a lock on the tenant's row, so concurrent requests cannot overshoot it)."
    )

    # Bounded work per request (each refused with a problem ``code`` named in docs/api.md's Limits table).
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image (width x height) decoded, in uploads and classify."
    )
    max_json_body_bytes: int = Field(1 * MiB, ge=1, description="Largest JSON request body (job submission).")
    max_json_depth: int = Field(
        16, ge=2, le=200, description="Deepest nesting of JSON in request bodies, labels and classes.json."
    )
    max_classes_json_bytes: int = Field(1 * MiB, ge=1, description="Largest classes.json in an upload.")
    max_classes: int = Field(10_000, ge=2, description="Most classes in a dataset.")
    max_class_name_chars: int = Field(
        200, ge=1, description="Longest class name (folder or classes.json value) and classify label."
    )
    max_labels: int = Field(1000, ge=1, description="Most labels in one classify request.")
    max_classify_prompts: int = Field(
        10_000, ge=1, description="Most prompts (labels x the model's templates) one classify request encodes."
    )
    classify_max_params: int | None = Field(
        300_000_000, ge=1, description="Largest model (parameters) the API process loads for classify; larger "
        "ones, and ones whose size cannot be known without a download, answer 422 model_too_large; 'none': any.",
    )
    max_templates: int = Field(100, ge=1, description="Most prompt templates in one job.")
    max_template_chars: int = Field(300, ge=3, description="Longest prompt template.")
    max_metadata_bytes: int = Field(8192, ge=2, description="Largest job metadata, as JSON.")

    # Models the service may load (jobs and classify); anything else is refused before a job is queued.
    models_dir: Path | None = Field(
        None, description="Folder of weights files a job's `pretrained` may name (relative to it); unset: none."
    )
    allow_hf_hub: bool = Field(
        False, description="Allow 'hf-hub:' models (the service then downloads from Hugging Face)."
    )

    # Storage.
    min_free_bytes: int = Field(
        1024 * MiB, ge=0, description="/readyz answers 503 when the data dir has less free space than this."
    )

    # Classify in the API process.
    classifier_cache_size: int = Field(4, ge=1, description="Models kept loaded for classify (LRU).")
    api_device: str | None = Field("cpu", description="Device the API classifies on ('cpu', 'cuda', ...).")

    # Worker.
    device: str | None = Field(None, description="Device jobs train on; unset picks CUDA when available.")
    cuda_memory_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of the GPU's memory one worker process may take (torch's per-process memory fraction);"
        " unset: all of it. Two workers on one GPU: 0.5 each. A job that needs more fails out_of_memory.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Autocast of the jobs' forward passes: 'auto' (bf16 on a CUDA device with bf16, fp32 elsewhere),"
        " 'bf16' or 'fp32'.",
    )
    data_workers: int | None = Field(
        None,
        ge=0,
        description="Data-loader processes per job that decode and transform images (0: in the job's process); "
        "unset: automatic, 0 on the CPU, on CUDA min(8, cores / GPUs), at least 1 (saft_core.data.auto_workers; "
        "cores as the process's affinity and cgroup limit allow): decoding in the job process starves a GPU. They "
        "hand batches over in shared memory: in Docker give the worker shm_size (compose sets 8 GB); a loader "
        "process that dies fails the job with data_loader_failed.",
    )
    job_time_limit: int = Field(
        24 * 3600, ge=60, description="Seconds a job may run, then it fails time_limit (a Redis broker's visibility "
        "timeout is this + 1 h)."
    )

    # Liveness: the job row is the truth (see saft_service/reaper.py).
    heartbeat_interval: float = Field(
        10.0, gt=0, description="Seconds between two heartbeats of a running job's process."
    )
    heartbeat_timeout: float = Field(
        60.0, gt=0, description="A running job without a heartbeat this long is presumed lost and requeued."
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a job is started; a job whose worker is lost this often fails worker_lost."
    )
    run_reaper: bool = Field(
        True, description="Run the reaper in this API process (on Postgres one process acts per pass)."
    )
    reaper_interval: float = Field(
        15.0, gt=0, description="Seconds between two passes of the reaper (run by the API process)."
    )
    requeue_after: float = Field(
        60.0,
        gt=0,
        description="A queued job whose message the broker does not hold is sent again after this long.",
    )
    dispatch_window: int = Field(
        1,
        ge=1,
        description="Messages of a queue waiting in the broker at a time (dispatched, not yet started); the other "
        "queued jobs wait in the store and are dispatched round-robin across tenants as workers take jobs "
        "(see saft_service/dispatch.py).",
    )
    snapshot_interval: float = Field(
        30.0, ge=0, description="Least seconds between two snapshots of a SAFT job's training state."
    )
    dense_snapshot_interval: float = Field(
        300.0, ge=0, description="The same for full fine-tuning (its state is every weight)."
    )
    db_retry_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a worker keeps retrying a database write that records a job's end.",
    )
    retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of a 503 database_unavailable (answered while the database is unreachable)."
    )
    progress_interval: float = Field(
        1.0, ge=0.0, description="Least seconds between two progress writes of a running job (events every 10x)."
    )
    worker_max_tasks_per_child: int | None = Field(
        None, ge=1, description="Recycle the worker's job process after this many jobs (frees GPU memory)."
    )

    # Isolation between tenants and safe retries: idempotency keys, the database pool, the classify cache,
    # event streams.
    idempotency_ttl: int = Field(
        24 * 3600, ge=24 * 3600, description="Seconds an Idempotency-Key and its first answer are kept (>= 1 day); "
        "expired keys are purged."
    )
    idempotency_stale_after: int = Field(
        600,
        ge=10,
        description="A request that has held its Idempotency-Key this long without answering is presumed lost; "
        "a retry then runs again instead of answering 409.",
    )
    db_pool_size: int = Field(
        10, ge=1, description="Database connections each API or worker process keeps open (SQLAlchemy pool)."
    )
    db_max_overflow: int = Field(10, ge=0, description="Extra connections a process may open under a burst.")
    db_pool_timeout: float = Field(
        10.0, gt=0, description="Seconds a request waits for a free connection before answering 503 database_busy "
        "with Retry-After (logged)."
    )
    classifier_cache_bytes: int = Field(
        2048 * MiB, ge=1, description="Most bytes of model weights the classify cache keeps loaded (least recently "
        "used out first; a model larger than this is used for its request and not kept)."
    )
    event_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between the API's checks for new job events (one query for all streams)."
    )

    # Webhooks (saft_service/webhooks.py): signed messages about a tenant's jobs, sent by each worker process.
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs that resolve to loopback, private, link-local or metadata addresses "
        "(refused by default, at registration and again before each delivery)."
    )
    webhook_timeout: float = Field(
        10.0, gt=0, le=60, description="Seconds a webhook receiver gets to connect and to answer (each; twice that in "
        "all)."
    )
    webhook_retry_base: float = Field(
        30.0, gt=0, description="Seconds before a failed webhook delivery's first retry; each retry waits twice as "
        "long as the one before."
    )
    webhook_retry_for: float = Field(
        24 * 3600.0, gt=0, description="Seconds a webhook delivery is retried for; then it is marked failed."
    )
    webhook_poll_interval: float = Field(
        2.0, gt=0, description="Seconds between a worker's checks for webhook deliveries that are due."
    )
    max_webhooks: int = Field(20, ge=1, description="Most webhook endpoints one tenant may register.")

    # Logs (stderr, one line per record).
    log_level: str = Field("INFO", description="Logging level of the API and worker.")
    log_format: LogFormat = Field(
        "text",
        description="'text': plain lines; 'json': one JSON object per line (time, level, logger, message, "
        "request_id, tenant, job_id where known).",
    )

    # Metrics (Prometheus; see saft_service/metrics.py).
    metrics_token: str | None = Field(
        None, description="When set, GET /metrics needs 'Authorization: Bearer <this>' (401 otherwise); unset: open "
        "to all."
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port on which each worker serves its metrics (/metrics, on all interfaces: "
        "keep it on the private network); unset: none."
    )
    metrics_max_tenants: int = Field(
        50, ge=1, description="Tenants listed by name in saft_tenant_storage_bytes (the largest; the rest summed "
        "as tenant=\"_other\")."
    )

    @field_validator("classify_max_params", mode="before")
    @classmethod
    def _no_budget(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [p for p in value.split(os.pathsep) if p.strip()]
        return value

    @property
    def resolved_import_roots(self) -> list[Path]:
        """The import roots, absolute and with links resolved (a path is checked against these)."""
        return [p.expanduser().resolve() for p in self.import_roots]

    @property
    def max_upload_part_bytes(self) -> int:
        """The largest part any upload may have (its request-body limit)."""
        return max(self.upload_part_bytes, -(-self.max_multipart_bytes // self.max_upload_parts))

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'saft.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "sqla+sqlite:///" + str(self.resolved_data_dir / "broker.sqlite")

    @property
    def visibility_timeout(self) -> int:
        """Seconds a Redis broker waits for an ack before redelivering: longer than the longest job."""
        return self.job_time_limit + 3600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment once)."""
    return Settings()
