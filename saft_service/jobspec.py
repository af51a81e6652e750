"""What a job request says, validated once, and its mapping onto the core's ``FinetuneConfig``. The API
validates requests with ``JobSpec``; the worker maps the stored spec with ``to_finetune_config``. Both go
through here, so the two cannot disagree.

Validate on write, trust on read: a request is validated when it is submitted; a stored spec is read back with
``stored_spec``, which does not validate it again. Ranges change between versions, and a job stored under an
older, wider range must still list, read and classify; whether it can still run is the core's to say when the
worker maps it (``to_finetune_config`` raises ``ConfigError``, the job fails with ``invalid_config``).

Every field that is an option of the core takes its type, default, bounds and help text from the core's config
dataclasses (``core_fields.py``): a new field of ``TrainConfig`` is a new hyper-parameter, of ``ScoringConfig``
a new field of the SAFT method, with no edit here. Where each option sits in the JSON:

    method (type "saft")   TrainConfig.ratio; ScoringConfig but batch_size (reduction -> score_reduction)
    hyperparameters        TrainConfig but method and ratio; DataConfig.shots;
                           ScoringConfig.batch_size -> scoring_batch_size
    top level              ModelSpec.name -> model, .pretrained; DataConfig.validation_fraction, .templates;
                           the service's own: metadata, priority (the dispatcher's, saft_service/dispatch.py)
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from saft_core.config import (
    DEFAULT_TEMPLATES,
    DataConfig,
    FinetuneConfig,
    ModelSpec,
    Precision,
    ScoringConfig,
    TrainConfig,
    check_template,
)
from saft_core.options import option_of

from .core_fields import core_field, core_fields, field_of
from .input_checks import ID_PATTERN

# Options that sit elsewhere than their dataclass says (see the module docstring).
_TRAIN_NOT_HYPERPARAMETERS = ("method", "ratio")  # method: the ``method.type`` union; ratio: SAFT's own
_SCORING_NOT_METHOD = ("batch_size",)  # a hyper-parameter, named scoring_batch_size
_SCORING_RENAMED = {"reduction": "score_reduction"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _SaftMethodBase(_Section):
    type: Literal["saft"] = "saft"
    ratio: float = core_field(TrainConfig, "ratio")


SaftMethod = create_model(
    "SaftMethod",
    __base__=_SaftMethodBase,
    __doc__="Sparse fine-tuning: train the ``ratio`` fraction of parameters with the largest gradient scores.",
    __module__=__name__,
    **core_fields(ScoringConfig, skip=_SCORING_NOT_METHOD, rename=_SCORING_RENAMED),
)


class FullMethod(_Section):
    """Full fine-tuning of every parameter (the baseline SAFT is compared with)."""

    type: Literal["full"] = "full"


Method = Annotated[SaftMethod | FullMethod, Field(discriminator="type")]

Hyperparameters = create_model(
    "Hyperparameters",
    __base__=_Section,
    __doc__="The training loop. Defaults, ranges and help texts are the core's.",
    __module__=__name__,
    **core_fields(TrainConfig, skip=_TRAIN_NOT_HYPERPARAMETERS),
    shots=(int | None, core_field(DataConfig, "shots")),
    scoring_batch_size=(int, field_of(option_of(ScoringConfig, "batch_size"))),
)


class JobSpec(BaseModel):
    """A fine-tuning request."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    dataset_id: str = Field(..., min_length=1, max_length=40, pattern=ID_PATTERN, description="Training dataset.")
    model: str = core_field(ModelSpec, "name", note="See GET /v1/models.", min_length=1, max_length=200)
    pretrained: str | None = core_field(
        ModelSpec, "pretrained", note="A weights file is named relative to the workers' SAFT_MODELS_DIR.",
        max_length=500,
    )
    method: Method = Field(default_factory=SaftMethod)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    eval_dataset_ids: list[Annotated[str, Field(min_length=1, max_length=40, pattern=ID_PATTERN)]] = Field(
        default_factory=list, max_length=16, description="Extra evaluation sets."
    )
    validation_fraction: float = core_field(DataConfig, "validation_fraction")
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description=f"{option_of(DataConfig, 'templates').help} No other brace is interpreted. Count and length "
        "are limited (SAFT_MAX_TEMPLATES, SAFT_MAX_TEMPLATE_CHARS).",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form, echoed back (at most SAFT_MAX_METADATA_BYTES of JSON, 8 KiB by default).",
    )
    priority: Literal["low", "normal", "high"] = Field(
        "normal",
        description="Order among this tenant's own queued jobs (high first, then first submitted); tenants take "
        "turns regardless of it.",
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
    spec: JobSpec, *, train_dir: Path, eval_dirs: dict[str, Path], device: str | None = None,
    workers: int | None = None, precision: Precision = "auto",
) -> FinetuneConfig:
    """Map a job spec onto the core's config. ``eval_dirs`` maps eval dataset ids to their directories;
    ``workers`` None lets the core choose the data-loader workers for the device (``DataConfig.workers``).

    Raises ``saft_core.errors.ConfigError`` where the core refuses a value (a ValueError, so pydantic reports
    it as a validation error inside ``JobSpec``).
    """
    hp = spec.hyperparameters
    method = spec.method
    is_saft = isinstance(method, SaftMethod)
    # Every hyper-parameter that is a TrainConfig field by name; the method's fields are ScoringConfig's.
    train = {name: getattr(hp, name) for name in TrainConfig.__dataclass_fields__ if name in type(hp).model_fields}
    scoring = (
        {name: getattr(method, _SCORING_RENAMED.get(name, name)) for name in ScoringConfig.__dataclass_fields__
         if name not in _SCORING_NOT_METHOD}
        if is_saft
        else {}
    )
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
            method="saft" if is_saft else "full", ratio=method.ratio if is_saft else TrainConfig.ratio, **train
        ),
        scoring=ScoringConfig(batch_size=hp.scoring_batch_size, **scoring),
        device=device,
        precision=precision,
        evaluate_zero_shot=True,
    )
