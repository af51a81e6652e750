"""What a job request says, validated once (pydantic, mirroring the core's ranges), and its mapping onto the
core's ``FinetuneConfig``. The API validates requests with ``JobSpec``; the worker maps the stored spec with
``to_finetune_config``. Both go through here, so the two cannot disagree.

Validate on write, trust on read: a request is validated when it is submitted; a stored spec is read back with
``stored_spec``, which does not validate it again. Ranges change between versions, and a job stored under an
older, wider range must still list, read and classify; whether it can still run is the core's to say when the
worker maps it (``to_finetune_config`` raises ``ConfigError``, the job fails with ``invalid_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saft_core.config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATES,
    DataConfig,
    FinetuneConfig,
    ModelSpec,
    ScoringConfig,
    TrainConfig,
    check_template,
    field_help,
)

from .limits import ID_PATTERN


class SaftMethod(BaseModel):
    """Sparse fine-tuning: train the ``ratio`` fraction of parameters with the largest gradient scores."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["saft"] = "saft"
    ratio: float = Field(0.001, gt=0.0, lt=1.0, description="Fraction of eligible parameters to fine-tune.")
    towers: Literal["all", "image", "text"] = Field("all", description="Which towers are eligible.")
    exclude_embeddings: bool = False
    exclude_norms: bool = False
    exclude_biases: bool = False
    score_reduction: Literal["abs", "abs_sum", "squared"] = Field(
        "abs", description="How scores sum over batches."
    )


class FullMethod(BaseModel):
    """Full fine-tuning of every parameter (the baseline SAFT is compared with)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["full"] = "full"


Method = Annotated[SaftMethod | FullMethod, Field(discriminator="type")]


class Hyperparameters(BaseModel):
    """The training loop. Defaults are the core's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    epochs: int = Field(10, ge=1, le=1000)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    batch_size: int = Field(32, ge=1, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)
    warmup_steps: int = Field(0, ge=0, le=1_000_000)
    grad_clip: float | None = Field(1.0, gt=0.0, description="Global gradient-norm clip; null disables.")
    augment: bool = False
    shots: int | None = Field(None, ge=1, le=100_000, description="Keep k images per class; null keeps all.")
    scoring_batch_size: int = Field(32, ge=1, le=4096)
    grad_engine: Literal["sparse", "dense"] = Field(
        TrainConfig.grad_engine, description=field_help(TrainConfig, "grad_engine")
    )


class JobSpec(BaseModel):
    """A fine-tuning request."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    dataset_id: str = Field(..., min_length=1, max_length=40, pattern=ID_PATTERN, description="Training dataset.")
    model: str = Field(
        DEFAULT_MODEL, min_length=1, max_length=200, description="Base model (see GET /v1/models)."
    )
    pretrained: str | None = Field(
        DEFAULT_PRETRAINED,
        max_length=500,
        description="Weights: a pretrained tag of the model or a weights file on the workers; omitted: the "
        "model's default weights; 'none' or null: a seeded random init.",
    )
    method: Method = Field(default_factory=SaftMethod)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    eval_dataset_ids: list[Annotated[str, Field(min_length=1, max_length=40, pattern=ID_PATTERN)]] = Field(
        default_factory=list, max_length=16, description="Extra evaluation sets."
    )
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Held-out fraction of each class.")
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description="Prompt templates: plain text with exactly one '{}' where the class name goes (no other "
        "brace is interpreted). Count and length are limited (SAFT_MAX_TEMPLATES, SAFT_MAX_TEMPLATE_CHARS).",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form, echoed back (at most SAFT_MAX_METADATA_BYTES of JSON, 8 KiB by default).",
    )

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, templates: list[str]) -> list[str]:
        for t in templates:
            check_template(t)
        return templates

    @field_validator("eval_dataset_ids")
    @classmethod
    def _unique(cls, ids: list[str]) -> list[str]:
        if len(set(ids)) != len(ids):
            raise ValueError("eval_dataset_ids must not repeat")
        return ids

    @model_validator(mode="after")
    def _core_accepts(self) -> JobSpec:
        # The core's own validation is the last word; run it here so a request it would refuse is a 422.
        to_finetune_config(self, train_dir=Path("."), eval_dirs={})
        return self


def stored_spec(raw: Mapping[str, Any]) -> JobSpec:
    """The spec of a stored job (``Job.spec``), trusted: built without validation (see the module docstring).

    Fields added since the job was stored take their defaults; fields since removed are ignored.
    """
    values = deepcopy(dict(raw))  # the caller's row keeps its own lists and dicts
    method = values.get("method") or {}
    method_type = FullMethod if method.get("type") == "full" else SaftMethod
    values["method"] = method_type.model_construct(**method)
    values["hyperparameters"] = Hyperparameters.model_construct(**(values.get("hyperparameters") or {}))
    return JobSpec.model_construct(**values)


def to_finetune_config(
    spec: JobSpec, *, train_dir: Path, eval_dirs: dict[str, Path], device: str | None = None, workers: int = 0
) -> FinetuneConfig:
    """Map a job spec onto the core's config. ``eval_dirs`` maps eval dataset ids to their directories.

    Raises ``saft_core.errors.ConfigError`` where the core refuses a value (a ValueError, so pydantic reports
    it as a validation error inside ``JobSpec``).
    """
    hp = spec.hyperparameters
    method = spec.method
    is_saft = isinstance(method, SaftMethod)
    return FinetuneConfig(
        model=ModelSpec(name=spec.model, pretrained=spec.pretrained),
        data=DataConfig(
            train=str(train_dir),
            eval={name: str(path) for name, path in eval_dirs.items()},
            shots=hp.shots,
            validation_fraction=spec.validation_fraction,
            templates=tuple(spec.templates),
            workers=workers,
        ),
        train=TrainConfig(
            method="saft" if is_saft else "full",
            ratio=method.ratio if is_saft else TrainConfig.ratio,
            epochs=hp.epochs,
            batch_size=hp.batch_size,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            warmup_steps=hp.warmup_steps,
            grad_clip=hp.grad_clip,
            seed=hp.seed,
            augment=hp.augment,
            grad_engine=hp.grad_engine,
        ),
        scoring=ScoringConfig(
            batch_size=hp.scoring_batch_size,
            reduction=method.score_reduction if is_saft else "abs",
            towers=method.towers if is_saft else "all",
            exclude_embeddings=method.exclude_embeddings if is_saft else False,
            exclude_norms=method.exclude_norms if is_saft else False,
            exclude_biases=method.exclude_biases if is_saft else False,
        ),
        device=device,
        evaluate_zero_shot=True,
    )
