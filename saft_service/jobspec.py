"""What a job request says, validated once, and its mapping onto the core's ``FinetuneConfig``. The API
validates requests with ``JobSpec``; the worker maps the stored spec with ``to_finetune_config``. Both go
through here, so the two cannot disagree.

Validate on write, trust on read: a request is validated when it is submitted; a stored spec is read back with
``stored_spec``, which does not validate it again. Ranges change between versions, and a job stored under an
older, wider range must still list, read and classify; whether it can still run is the core's to say when the
worker maps it (``to_finetune_config`` raises ``ConfigError``, the job fails with ``invalid_config``). A spec in
an older shape (a request or a stored row) is brought to today's by one function, ``upgrade_spec``.

The sections are the core's config dataclasses, field for field and under the same names (``core_fields.py``):
a new field of ``SaftConfig`` is a new field of the SAFT method, of ``TrainConfig`` a new hyper-parameter, with
no edit here. Where each option sits in the JSON:

    method                 the method's config: SaftConfig (type "saft") or FullConfig (type "full")
    hyperparameters        TrainConfig, and DataConfig.shots (the one exception: how many images of each
                           class to keep is set beside the loop's options, as ``saft finetune --shots`` is)
    top level              ModelSpec.name -> model, .pretrained; DataConfig.validation_fraction, .templates;
                           the service's own: dataset_id, eval_dataset_ids, metadata, priority (the
                           dispatcher's, saft_service/dispatch.py)
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from saft_core.config import (
    DEFAULT_TEMPLATES,
    METHODS,
    DataConfig,
    FinetuneConfig,
    FullConfig,
    MethodConfig,
    ModelSpec,
    Precision,
    SaftConfig,
    TrainConfig,
    check_template,
)
from saft_core.options import option_of

from .core_fields import core_field, core_fields
from .input_checks import ID_PATTERN

# Order among one tenant's own queued jobs, lowest first (the dispatcher's, saft_service/dispatch.py).
Priority = Literal["low", "normal", "high"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _section(name: str, cls: type, **extra: Any) -> type[_Section]:
    """The job spec's section ``name``: every field of config dataclass ``cls`` (and ``extra`` fields)."""
    definitions: dict[str, Any] = {**core_fields(cls), **extra}
    return cast(
        "type[_Section]",
        create_model(name, __base__=_Section, __doc__=cls.__doc__, __module__=__name__, **definitions),
    )


if TYPE_CHECKING:
    # The sections' fields are made at import from the core's dataclasses, so a type checker cannot list them: to
    # it a section is a model whose attributes are what the core declares (read as Any).
    class _CoreSection(_Section):
        def __getattr__(self, name: str) -> Any: ...

    class SaftMethod(_CoreSection): ...

    class FullMethod(_CoreSection): ...

    class Hyperparameters(_CoreSection): ...
else:
    SaftMethod = _section("SaftMethod", SaftConfig)
    FullMethod = _section("FullMethod", FullConfig)
    Hyperparameters = _section(
        "Hyperparameters", TrainConfig, shots=(int | None, core_field(DataConfig, "shots"))
    )

Method = Annotated[SaftMethod | FullMethod, Field(discriminator="type")]


def core_config(section: BaseModel, cls: type[Any]) -> Any:
    """The config dataclass ``cls`` made of ``section``'s fields of the same names (the core checks them)."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def method_config(method: SaftMethod | FullMethod) -> MethodConfig:
    """The core's config of a job's ``method`` section: ``SaftConfig`` or ``FullConfig``, by its ``type``."""
    config: MethodConfig = core_config(method, METHODS[method.type])
    return config


def upgrade_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A job spec of an earlier shape (a stored row, or a request in the older wire format) in today's shape; a
    copy, ``raw`` is not changed. Nothing is validated: what does not fit is left to the caller to judge.

    The shapes so far, oldest first:
    1. fields added since (``grad_engine``, ``priority``, ...) are missing: the reader's defaults apply, nothing
       to do here;
    2. until the sections became the core's configs, ``scoring_batch_size`` was a hyper-parameter; it is the
       SAFT method's now. Full fine-tuning has none (its evaluation reads the training batch): dropped.
    Raises ``ValueError`` where a spec gives the scoring batch in both places with different values.
    """
    spec = deepcopy(dict(raw))
    hp = spec.get("hyperparameters")
    if isinstance(hp, Mapping) and "scoring_batch_size" in hp:
        spec["hyperparameters"] = {k: v for k, v in hp.items() if k != "scoring_batch_size"}
        value = hp["scoring_batch_size"]
        method = spec.get("method", {"type": "saft"})  # the default method
        if isinstance(method, Mapping) and method.get("type") != "full":
            if method.get("scoring_batch_size", value) != value:
                raise ValueError("hyperparameters.scoring_batch_size and method.scoring_batch_size differ; "
                                 "give only method.scoring_batch_size")
            spec["method"] = {**method, "scoring_batch_size": value}
    return spec


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
    priority: Priority = Field(
        "normal",
        description="Order among this tenant's own queued jobs (high first, then first submitted); tenants take "
        "turns regardless of it.",
    )

    @property
    def dataset_ids(self) -> list[str]:
        """The training set's id, then the evaluation sets'."""
        return [self.dataset_id, *self.eval_dataset_ids]

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        # A request in an older shape means what it meant (hyperparameters.scoring_batch_size, for one).
        return upgrade_spec(data) if isinstance(data, Mapping) else data

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
        # The core's own checks are the last word: a request it would refuse is a 422.
        to_finetune_config(self, train_dir=Path("."), eval_dirs={})
        return self


def stored_spec(raw: Mapping[str, Any]) -> JobSpec:
    """The spec of a stored job (``Job.spec``), trusted: upgraded to today's shape (``upgrade_spec``) and built
    without validation (see the module docstring).

    Fields added since the job was stored take their defaults; fields since removed are ignored.
    """
    values = upgrade_spec(raw)
    method = values.get("method") or {}
    values["method"] = (FullMethod if method.get("type") == "full" else SaftMethod).model_construct(**method)
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
        train=core_config(hp, TrainConfig),
        method=method_config(spec.method),
        device=device,
        precision=precision,
        evaluate_zero_shot=True,
    )
