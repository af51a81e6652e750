"""Typed models of the service's answers, mirroring its OpenAPI document (``/openapi.json``).

Field names, required fields and enumerations are checked against the live schema by the project's tests, so
a change on the server that the client does not know about fails there, not in a user's notebook. Unknown
extra fields are ignored, so an older client keeps reading a newer server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# --- datasets ---------------------------------------------------------------------------------------------


class Dataset(_Model):
    """An uploaded, checked ImageFolder dataset (server schema ``DatasetPublic``). ``external``: imported from a
    folder on the server (``source_path``), read there rather than copied into the service's storage."""

    id: str
    name: str
    status: Literal["ready"]
    num_images: int
    classes: list[str]
    class_names: list[str]
    counts: dict[str, int]
    size_bytes: int
    created_at: datetime
    external: bool = False
    source_path: str | None = None


# --- uploads ----------------------------------------------------------------------------------------------


class UploadPart(_Model):
    """A part the server holds: its ``number`` (from 1), size and SHA-256 (hex)."""

    number: int
    size: int
    sha256: str


class Upload(_Model):
    """A multipart upload in progress: ``parts_total`` parts of ``part_size`` bytes (the last one shorter) make
    the ``bytes`` of ``filename``; ``parts`` lists the received ones by number. It expires at ``expires_at``."""

    id: str
    filename: str
    bytes: int
    sha256: str | None
    part_size: int
    parts_total: int
    parts: list[UploadPart]
    bytes_received: int
    status: Literal["pending", "completing"]
    created_at: datetime
    expires_at: datetime

    @property
    def missing(self) -> list[int]:
        """Numbers of the parts not received yet."""
        held = {p.number for p in self.parts}
        return [n for n in range(1, self.parts_total + 1) if n not in held]


class Usage(_Model):
    """The tenant's storage: the total and its parts (datasets, pending uploads, jobs' files), and the quota
    (None: no quota)."""

    storage_bytes: int
    storage_quota_bytes: int | None
    datasets_bytes: int
    uploads_bytes: int
    jobs_bytes: int


# --- jobs -------------------------------------------------------------------------------------------------


class SaftMethod(_Model):
    type: Literal["saft"] = "saft"
    ratio: float = 0.001
    towers: Literal["all", "image", "text"] = "all"
    exclude_embeddings: bool = False
    exclude_norms: bool = False
    exclude_biases: bool = False
    score_reduction: Literal["abs", "abs_sum", "squared"] = "abs"
    scoring_batch_size: int = 32


class FullMethod(_Model):
    type: Literal["full"] = "full"


Method = Annotated[SaftMethod | FullMethod, Field(discriminator="type")]


class Hyperparameters(_Model):
    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    augment: bool = False
    shots: int | None = None
    grad_engine: Literal["sparse", "dense"] = "sparse"


class JobProgress(_Model):
    """Steps of the current stage while running; the training steps taken after success."""

    stage: str | None
    step: int
    total_steps: int


class JobError(_Model):
    code: str
    message: str


class CheckpointInfo(_Model):
    """The job's checkpoint; ``recommended_alpha`` is the alpha the job recommends (``alpha="recommended"`` in
    classify), None when it had no validation split or the server is older than the alpha frontier."""

    sha256: str
    size_bytes: int
    url: str
    recommended_alpha: float | None = None
    alpha_rule: str | None = None


class JobWarning(_Model):
    """Something that went wrong in training though the job succeeded (server schema ``JobWarning``): ``code``
    is stable (``loss_diverged``, ``loss_at_chance``, ``worse_than_zero_shot``, ``recommended_alpha_zero``),
    ``message`` one sentence with the numbers, ``hint`` what to try."""

    code: str
    message: str
    hint: str


class Job(_Model):
    """A fine-tuning job (server schema ``JobPublic``). ``warnings`` is empty for a healthy job (and from a
    server older than training health)."""

    id: str
    status: JobStatus
    stage: str | None
    progress: JobProgress
    metrics: dict[str, float]
    error: JobError | None
    dataset_id: str
    eval_dataset_ids: list[str]
    model: str
    pretrained: str | None
    method: Method
    hyperparameters: Hyperparameters
    validation_fraction: float
    templates: list[str]
    metadata: dict[str, Any]
    priority: Literal["low", "normal", "high"] = "normal"  # an older server sends none
    cancel_requested: bool
    attempts: int
    checkpoint: CheckpointInfo | None
    warnings: list[JobWarning] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.status in TERMINAL


class JobCreate(_Model):
    """The body of ``POST /v1/jobs`` (server schema ``JobCreate``). Omitted fields take the server's defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    dataset_id: str
    model: str | None = None
    pretrained: str | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None
    eval_dataset_ids: list[str] | None = None
    validation_fraction: float | None = None
    templates: list[str] | None = None
    metadata: dict[str, Any] | None = None
    priority: Literal["low", "normal", "high"] | None = None


class JobEvent(_Model):
    """A status change, stage, progress report, message, metrics or error (server schema ``JobEventPublic``).

    ``id`` increases within a job; ``data`` of a progress event has ``stage``, ``step``, ``total_steps`` and,
    while training, ``train_loss`` and ``learning_rate``; a status event has ``status``; a warning event has
    ``code``, ``hint`` and the numbers its message quotes."""

    id: int
    created_at: datetime
    kind: Literal["status", "stage", "progress", "message", "metrics", "warning", "error"]
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any]


# --- results ----------------------------------------------------------------------------------------------


class Evaluation(_Model):
    """Top-1/top-5 accuracy (fractions in [0, 1]) on ``n`` images of the model at ``alpha`` (0 zero-shot,
    1 fine-tuned, between interpolated) (server schema ``EvaluationPublic``)."""

    dataset: str
    dataset_name: str
    model: Literal["zero-shot", "interpolated", "fine-tuned"]
    alpha: float
    top1: float
    top5: float
    n: int
    num_classes: int

    @model_validator(mode="before")
    @classmethod
    def _alpha_of_an_older_server(cls, data: Any) -> Any:
        """A server older than the alpha frontier sends only the two ends, without their alpha."""
        if isinstance(data, dict) and "alpha" not in data and data.get("model") in ("zero-shot", "fine-tuned"):
            return {**data, "alpha": 0.0 if data["model"] == "zero-shot" else 1.0}
        return data


class MaskTensor(_Model):
    name: str
    numel: int
    selected: int


class Mask(_Model):
    """Where SAFT's budget went: ``k`` selected entries of ``num_eligible`` (server schema ``MaskPublic``)."""

    job_id: str
    ratio: float
    k: int
    num_eligible: int
    num_params: int
    sha256: str | None
    size_bytes: int | None
    url: str | None
    tensors: list[MaskTensor]


class Prediction(_Model):
    label: str
    score: float


class ImagePredictions(_Model):
    filename: str | None
    predictions: list[Prediction]


class Classification(_Model):
    """Per image, the top labels with probabilities (server schema ``ClassifyPublic``)."""

    model: str
    pretrained: str | None
    job_id: str | None
    alpha: float | None
    labels: list[str]
    results: list[ImagePredictions]


class ModelInfo(_Model):
    """A base model (server schema ``ModelPublic``). ``available_offline``: the weights of
    ``default_pretrained`` are on the service (no download); ``cached_pretrained`` lists each tag that is. Both
    have defaults so that an older server, which sends neither, still parses."""

    name: str
    pretrained: list[str]
    cached_pretrained: list[str]
    local: bool
    default_pretrained: str | None = None
    available_offline: bool = False


class Problem(_Model):
    """An RFC 9457 problem document; ``errors`` lists field errors of a validation error."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str
    request_id: str | None = None  # the request's X-Request-ID: quote it when reporting a problem


# --- webhooks ---------------------------------------------------------------------------------------------


class Webhook(_Model):
    """A registered webhook endpoint (server schema ``WebhookPublic``)."""

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(Webhook):
    """The answer to registering an endpoint: with its signing secret, shown this once."""

    secret: str


class WebhookSecret(_Model):
    """A rotated endpoint's new secret; the previous one also signs until ``previous_valid_until``."""

    id: str
    secret: str
    previous_valid_until: datetime


class WebhookAttempt(_Model):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class WebhookDelivery(_Model):
    """One message to an endpoint (``id`` is its ``webhook-id``) and every attempt at sending it."""

    id: str
    event_type: str
    job_id: str | None
    status: Literal["pending", "delivered", "failed"]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict[str, Any]
    attempts: list[WebhookAttempt]


# Client model -> the schema it mirrors in the server's OpenAPI document (the drift test walks this).
SERVER_SCHEMAS: dict[type[BaseModel], str] = {
    Dataset: "DatasetPublic",
    UploadPart: "UploadPartPublic",
    Upload: "UploadPublic",
    Usage: "UsagePublic",
    SaftMethod: "SaftMethod",
    FullMethod: "FullMethod",
    Hyperparameters: "Hyperparameters",
    JobProgress: "JobProgress",
    JobError: "JobError",
    CheckpointInfo: "CheckpointInfo",
    JobWarning: "JobWarning",
    Job: "JobPublic",
    JobCreate: "JobCreate",
    JobEvent: "JobEventPublic",
    Evaluation: "EvaluationPublic",
    MaskTensor: "MaskTensorPublic",
    Mask: "MaskPublic",
    Prediction: "Prediction",
    ImagePredictions: "ImagePredictions",
    Classification: "ClassifyPublic",
    ModelInfo: "ModelPublic",
    Problem: "Problem",
    Webhook: "WebhookPublic",
    WebhookCreated: "WebhookCreated",
    WebhookSecret: "WebhookSecret",
    WebhookAttempt: "WebhookAttemptPublic",
    WebhookDelivery: "WebhookDeliveryPublic",
}
