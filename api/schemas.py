"""Request and response bodies of the API: ``XCreate`` in, ``XPublic`` out, ``XsPublic`` for lists."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from saft_service.allowed_models import check_model
from saft_service.input_checks import (
    MAX_INT64,
    NO_CONTROL_CHARACTERS,
    LimitError,
    check_json_value,
    check_name,
)
from saft_service.jobspec import FullMethod, Hyperparameters, JobSpec, Priority, SaftMethod, stored_spec
from saft_service.settings import get_settings
from saft_service.tables import Checkpoint, Dataset, Evaluation, Job, JobEvent, Mask, Upload

# --- datasets ---------------------------------------------------------------------------------------------


class DatasetPublic(BaseModel):
    id: str
    name: str
    status: Literal["ready"] = Field(
        description="Always 'ready': an upload is checked in full before it is stored, so a stored dataset has "
        "no other state. The field stays so that clients that read it keep working."
    )
    num_images: int
    classes: list[str] = Field(description="Class folder names, sorted; a job's labels come from these.")
    class_names: list[str] = Field(description="Names used in prompts (from classes.json, else the folders).")
    counts: dict[str, int] = Field(description="Images per class.")
    size_bytes: int = Field(description="Bytes of its images (counted against the storage quota unless external).")
    external: bool = Field(
        False, description="Registered in place from a server path: the service reads the files where they are "
        "and never deletes them."
    )
    source_path: str | None = Field(None, description="The server folder of an external dataset.")
    created_at: datetime

    @classmethod
    def of(cls, ds: Dataset) -> DatasetPublic:
        return cls(
            id=ds.id,
            name=ds.name,
            status="ready",
            num_images=ds.num_images,
            classes=ds.classes,
            class_names=ds.class_names,
            counts=ds.counts,
            size_bytes=ds.size_bytes,
            external=bool(ds.external),
            source_path=ds.path if ds.external else None,
            created_at=ds.created_at,
        )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class PathSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["path"]
    path: str = Field(
        min_length=1, max_length=4096, pattern=NO_CONTROL_CHARACTERS,
        description="An absolute path on the server, under one of the operator's import roots (SAFT_IMPORT_ROOTS): "
        "an ImageFolder directory (read in place) or a .zip/.tar/.tar.gz archive (extracted into the store).",
    )


class DatasetImport(BaseModel):
    """Register a dataset that is already on the server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS, description="A name for people.")
    source: PathSource


# --- multipart uploads ------------------------------------------------------------------------------------

SHA256_HEX = r"^[0-9a-f]{64}$"


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    filename: str = Field(
        min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS,
        description="The archive's file name (.zip, .tar, .tar.gz), for people and logs.",
    )
    size: int = Field(alias="bytes", ge=1, le=MAX_INT64, description="The whole file's size in bytes.")
    sha256: str | None = Field(
        None, pattern=SHA256_HEX, description="The whole file's SHA-256 (lowercase hex); checked on completion."
    )


class UploadPartPublic(BaseModel):
    number: int = Field(description="1 to parts_total.")
    size: int
    sha256: str = Field(description="SHA-256 of the part as stored; compare with yours to know what to resend.")


class UploadPublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    filename: str
    size: int = Field(alias="bytes", description="The whole file's size in bytes.")
    sha256: str | None
    part_size: int = Field(description="Every part but the last has exactly this many bytes.")
    parts_total: int
    parts: list[UploadPartPublic] = Field(description="The parts received, by number.")
    bytes_received: int
    status: Literal["pending", "completing"]
    created_at: datetime
    expires_at: datetime = Field(description="An upload not completed by then is deleted with its parts.")

    @classmethod
    def of(cls, upload: Upload) -> UploadPublic:
        parts = [UploadPartPublic(number=p.number, size=p.size_bytes, sha256=p.sha256) for p in upload.parts]
        return cls(
            id=upload.id, filename=upload.filename, size=upload.size_bytes, sha256=upload.sha256,
            part_size=upload.part_size, parts_total=upload.parts_total, parts=parts,
            bytes_received=sum(p.size for p in parts), status=upload.status,
            created_at=upload.created_at, expires_at=upload.expires_at,
        )


class UploadsPublic(BaseModel):
    data: list[UploadPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS, description="A name for people.")


class UsagePublic(BaseModel):
    storage_bytes: int = Field(description="Bytes this tenant stores now (the sum of the three below).")
    storage_quota_bytes: int | None = Field(description="SAFT_TENANT_STORAGE_BYTES; null: no quota.")
    datasets_bytes: int = Field(description="Uploaded datasets (external ones are not counted).")
    uploads_bytes: int = Field(description="Multipart uploads in flight (their declared size, reserved).")
    jobs_bytes: int = Field(description="Checkpoints and masks of jobs.")


# --- jobs -------------------------------------------------------------------------------------------------


def _refused(e: LimitError) -> PydanticCustomError:
    """A limit's refusal as a validation error whose type is the limit's code (the problem's ``code``)."""
    return PydanticCustomError(e.code, "{message}", {"message": e.message})


class JobCreate(JobSpec):
    """A fine-tuning request. Unknown fields are refused (422); the service's limits (settings) apply here,
    when a job is submitted, and not to stored jobs, so lowering a limit never makes old jobs unreadable."""

    @field_validator("templates")
    @classmethod
    def _templates_within_limits(cls, templates: list[str]) -> list[str]:
        settings = get_settings()
        try:
            if len(templates) > settings.max_templates:
                raise LimitError(
                    "too_many_templates",
                    f"{len(templates)} templates; the limit is {settings.max_templates} (SAFT_MAX_TEMPLATES)",
                )
            for i, t in enumerate(templates):
                check_name(
                    t, max_chars=settings.max_template_chars, what=f"template {i}", code="template_too_long"
                )
        except LimitError as e:
            raise _refused(e) from e
        return templates

    @field_validator("metadata")
    @classmethod
    def _metadata_within_limits(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        settings = get_settings()
        try:
            check_json_value(metadata, max_depth=settings.max_json_depth, what="metadata")
            size = len(json.dumps(metadata).encode())
            if size > settings.max_metadata_bytes:
                raise LimitError(
                    "metadata_too_large",
                    f"metadata is {size} bytes of JSON; the limit is {settings.max_metadata_bytes} "
                    "(SAFT_MAX_METADATA_BYTES)",
                )
        except LimitError as e:
            raise _refused(e) from e
        return metadata

    @model_validator(mode="after")
    def _model_allowed(self) -> JobCreate:
        try:
            check_model(self.model, self.pretrained, get_settings())
        except LimitError as e:
            raise _refused(e) from e
        return self

    model_config = {
        **JobSpec.model_config,
        "json_schema_extra": {
            "examples": [
                {
                    "dataset_id": "ds_0123456789abcdef01234567",
                    "model": "saft-tiny",
                    "method": {"type": "saft", "ratio": 0.001},
                    "hyperparameters": {"epochs": 5, "learning_rate": 0.001, "batch_size": 32, "seed": 0},
                    "validation_fraction": 0.2,
                }
            ]
        },
    }


class JobProgress(BaseModel):
    """While running: steps of the current stage. After success: the training steps taken."""

    stage: str | None = Field(description="loading, scoring, masking, training, evaluating or saving.")
    step: int
    total_steps: int


class JobError(BaseModel):
    code: str = Field(description="Stable snake_case code, e.g. invalid_dataset, out_of_memory, cancelled.")
    message: str


ALPHA_RULE_HELP = "The rule that chose `recommended_alpha` on the job's validation split (see docs/method.md)."


class CheckpointInfo(BaseModel):
    sha256: str
    size_bytes: int
    url: str
    recommended_alpha: float | None = Field(
        None,
        description="The alpha the job recommends (`alpha=recommended` in classify); null when the job had no "
        "validation split.",
    )
    alpha_rule: str | None = Field(None, description=ALPHA_RULE_HELP)


class JobWarning(BaseModel):
    """Something that went wrong in training though the job succeeded (``saft_core.health``)."""

    code: str = Field(
        description="Stable: loss_diverged (the loss is not finite or ended well above its start), loss_at_chance "
        "(it ended at or above ln(number of classes)), worse_than_zero_shot (fine-tuned below zero-shot on the "
        "validation split), recommended_alpha_zero (the frontier's rule recommends the pre-trained weights)."
    )
    message: str = Field(description="One sentence with the numbers.")
    hint: str = Field(description="What to try, e.g. a learning rate 10x lower.")


class JobPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None
    progress: JobProgress
    metrics: dict[str, float]
    error: JobError | None
    dataset_id: str
    eval_dataset_ids: list[str]
    model: str
    pretrained: str | None
    method: SaftMethod | FullMethod
    hyperparameters: Hyperparameters
    validation_fraction: float
    templates: list[str]
    metadata: dict[str, Any]
    priority: Priority = Field("normal", description="Order among this tenant's own queued jobs.")
    cancel_requested: bool
    attempts: int
    checkpoint: CheckpointInfo | None
    warnings: list[JobWarning] = Field(
        default_factory=list,
        description="What went wrong in training though the job succeeded (also a `warning` event each); "
        "empty when nothing did."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        spec = stored_spec(job.spec)  # trusted: validated when it was submitted
        ckpt: Checkpoint | None = job.checkpoint
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=JobProgress(stage=job.stage, step=job.step, total_steps=job.total_steps),
            metrics=job.metrics or {},
            error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            dataset_id=spec.dataset_id,
            eval_dataset_ids=spec.eval_dataset_ids,
            model=spec.model,
            pretrained=spec.pretrained,
            method=spec.method,
            hyperparameters=spec.hyperparameters,
            validation_fraction=spec.validation_fraction,
            templates=spec.templates,
            metadata=spec.metadata,
            priority=spec.priority,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            checkpoint=CheckpointInfo(
                sha256=ckpt.sha256,
                size_bytes=ckpt.size_bytes,
                url=f"/v1/jobs/{job.id}/checkpoint",
                recommended_alpha=ckpt.recommended_alpha,
                alpha_rule=ckpt.alpha_rule,
            )
            if ckpt is not None
            else None,
            warnings=[JobWarning(code=w["code"], message=w["message"], hint=w["hint"]) for w in job.warnings or []],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class JobEventPublic(BaseModel):
    id: int = Field(description="Increasing; resume a stream with `after` or the Last-Event-ID header.")
    created_at: datetime
    kind: Literal["status", "stage", "progress", "message", "metrics", "warning", "error"] = Field(
        description="A `warning` event's data holds its stable `code`, a `hint` and the numbers it quotes."
    )
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, e: JobEvent) -> JobEventPublic:
        return cls(
            id=e.id, created_at=e.created_at, kind=e.kind, level=e.level, message=e.message, data=e.data or {}
        )


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]


class MaskTensorPublic(BaseModel):
    name: str
    numel: int
    selected: int


class MaskPublic(BaseModel):
    job_id: str
    ratio: float
    k: int = Field(description="Entries selected in total.")
    num_eligible: int
    num_params: int
    sha256: str | None
    size_bytes: int | None
    url: str | None = Field(description="The mask file (safetensors: `<param>:idx` per tensor).")
    tensors: list[MaskTensorPublic]

    @classmethod
    def of(cls, m: Mask) -> MaskPublic:
        return cls(
            job_id=m.job_id,
            ratio=m.ratio,
            k=m.k,
            num_eligible=m.num_eligible,
            num_params=m.num_params,
            sha256=m.sha256,
            size_bytes=m.size_bytes,
            url=f"/v1/jobs/{m.job_id}/mask/file" if m.path else None,
            tensors=[MaskTensorPublic(name=t.name, numel=t.numel, selected=t.selected) for t in m.tensors],
        )


class EvaluationPublic(BaseModel):
    dataset: str = Field(description="'validation' (the held-out split) or an eval dataset id.")
    dataset_name: str
    model: Literal["zero-shot", "interpolated", "fine-tuned"] = Field(
        description="zero-shot at alpha 0, fine-tuned at alpha 1, interpolated between."
    )
    alpha: float = Field(
        description="Where the weights were: base + alpha * (fine-tuned - base); 0 is the base model."
    )
    top1: float
    top5: float
    n: int
    num_classes: int

    @classmethod
    def of(cls, e: Evaluation, name: str) -> EvaluationPublic:
        return cls(
            dataset=e.dataset,
            dataset_name=name,
            model=e.model,
            alpha=e.alpha,
            top1=e.top1,
            top5=e.top5,
            n=e.n,
            num_classes=e.num_classes,
        )


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic] = Field(description="Every dataset at every alpha of the grid, by alpha.")
    recommended_alpha: float | None = Field(
        None, description="The alpha the job recommends; null without a validation split or before success."
    )
    alpha_rule: str | None = Field(None, description=ALPHA_RULE_HELP)


# --- classify and models ----------------------------------------------------------------------------------


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Probability (softmax over the labels).")


class ImagePredictions(BaseModel):
    filename: str | None
    predictions: list[Prediction]


class ClassifyPublic(BaseModel):
    model: str
    pretrained: str | None
    job_id: str | None
    alpha: float | None = Field(description="With job_id: the alpha applied (a number, also for `recommended`).")
    labels: list[str]
    results: list[ImagePredictions]


class ModelPublic(BaseModel):
    name: str
    pretrained: list[str] = Field(description="Pretrained tags open_clip knows for this architecture.")
    cached_pretrained: list[str] = Field(description="Tags whose weights are available offline.")
    local: bool = Field(description="Whether the model can be created offline (weights included).")
    default_pretrained: str | None = Field(
        None,
        description="The tag `pretrained: \"default\"` means for this model; null when it has no pretrained weights "
        "(a random init).",
    )
    available_offline: bool = Field(
        False,
        description="Whether the weights of `default_pretrained` are on the service, so a job runs without a "
        "download. Otherwise they download on first use, which fails on a service without internet "
        "(`cached_pretrained` lists the tags that are there).",
    )


class ModelsPublic(BaseModel):
    default: str
    data: list[ModelPublic] = Field(description="The default model first, then those available offline, by name.")
    weights_files: list[str] = Field(
        default_factory=list,
        description="Weights files in the service's models folder (SAFT_MODELS_DIR) that `pretrained` may name, "
        "with any architecture they fit; empty when there is none.",
    )


class HealthPublic(BaseModel):
    status: Literal["ok", "ready"]
    checks: dict[str, str] = Field(default_factory=dict)
