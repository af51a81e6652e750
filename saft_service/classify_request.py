"""What a classify request resolves to, checked against the store and the service's limits, without HTTP.

    parse_labels      the ``labels`` field: a bounded JSON list of distinct names
    choose_classifier which model classifies: a succeeded job's checkpoint (its model, its classes as the
                      default labels, the alpha asked for or the one it recommends) or a base model zero-shot;
                      then the request's cost (labels x templates, the model's size) against the limits
    decode_upload     one uploaded image, decoded by the core's decoder

The caller finds the job (the tenant's, or none); loading and caching the classifier stay with the caller
(the API's ``ClassifierCache``). Refusals are ``ClassifyRefused`` (status and problem code) or, for a limit,
``LimitError``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from saft_core.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEFAULT_TEMPLATES, ModelSpec
from saft_core.frontier import AlphaChoice, resolve_alpha
from saft_core.images import ImageDecodeError, decode_image
from saft_core.models import parameter_count

from .allowed_models import check_model, resolve_pretrained
from .input_checks import LimitError, Refused, check_name, loads_bounded
from .jobs import JobStatus
from .jobspec import stored_spec
from .settings import Settings
from .storage import Storage
from .tables import Job

# Large JPEGs are decoded at a reduced scale (DCT scaling) no smaller than this; the model sees 224 px or so.
_DRAFT_SIZE = (1024, 1024)


class ClassifyRefused(Refused):
    """A classify request is refused."""


@dataclass(frozen=True)
class ClassifierChoice:
    """The classifier a request uses and what it is asked.

    ``model``: as the client names it (answered back); ``load``: the same with its weights resolved to what
    the core loads; ``checkpoint`` and ``checkpoint_sha256``: a job's fine-tuned weights (None zero-shot);
    ``alpha``: the interpolation applied (1.0 zero-shot); ``labels``: the names to score; ``templates``: the
    prompt templates per label."""

    model: ModelSpec
    load: ModelSpec
    checkpoint: Path | None
    checkpoint_sha256: str | None
    alpha: float
    labels: list[str]
    templates: int

    @property
    def fine_tuned(self) -> bool:
        return self.checkpoint is not None


def parse_labels(raw: str | None, settings: Settings) -> list[str] | None:
    """``labels`` form field: a JSON list of distinct non-empty strings, or None when absent.

    Bounded: at most ``max_labels`` labels of ``max_class_name_chars`` each, no control characters, and the
    JSON no deeper than ``max_json_depth`` (checked before parsing)."""
    if raw is None or raw.strip() == "":
        return None
    try:
        labels = loads_bounded(raw, max_depth=settings.max_json_depth, what="labels")
    except LimitError:
        raise
    except ValueError as e:  # json.JSONDecodeError, NaN/Infinity
        raise ClassifyRefused(
            422, "invalid_labels", f'labels must be a JSON list of strings, e.g. ["cat", "dog"]: {e}'
        ) from e
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ClassifyRefused(
            422, "invalid_labels", 'labels must be a JSON list of non-empty strings, e.g. ["cat", "dog"]'
        )
    if len(labels) > settings.max_labels:
        raise LimitError(
            "too_many_labels", f"{len(labels)} labels; the limit is {settings.max_labels} (SAFT_MAX_LABELS)"
        )
    for i, label in enumerate(labels):
        check_name(label, max_chars=settings.max_class_name_chars, what=f"label {i}", code="label_too_long")
    if not labels:
        raise ClassifyRefused(422, "invalid_labels", "give at least one label")
    if len(set(labels)) != len(labels):
        raise ClassifyRefused(422, "invalid_labels", "labels must be distinct")
    return labels


def check_cost(model: str, labels: int, templates: int, settings: Settings) -> None:
    """Refuse a classify request whose head or model is over the service's limits, before anything is built:
    ``too_many_prompts`` (labels x templates over ``SAFT_MAX_CLASSIFY_PROMPTS``; each prompt is a pass of the
    text encoder) and ``model_too_large`` (more parameters than ``SAFT_CLASSIFY_MAX_PARAMS``, or a size that
    cannot be known without a download)."""
    prompts = labels * templates
    if prompts > settings.max_classify_prompts:
        raise LimitError(
            "too_many_prompts",
            f"{labels} labels x {templates} templates = {prompts} prompts; the limit is "
            f"{settings.max_classify_prompts} (SAFT_MAX_CLASSIFY_PROMPTS); send fewer labels",
        )
    limit = settings.classify_max_params
    if limit is None:
        return
    count = parameter_count(model)
    if count is None:
        raise LimitError(
            "model_too_large",
            f"the size of model {model!r} cannot be checked without downloading it; classify here loads only "
            f"models of at most {limit} parameters (SAFT_CLASSIFY_MAX_PARAMS)",
        )
    if count > limit:
        raise LimitError(
            "model_too_large",
            f"model {model!r} has {count} parameters; classify here loads models of at most {limit} "
            "(SAFT_CLASSIFY_MAX_PARAMS)",
        )


def choose_classifier(
    *, job: Job | None, model: str | None, pretrained: str | None, labels: list[str] | None, alpha: AlphaChoice,
    settings: Settings, storage: Storage,
) -> ClassifierChoice:
    """The classifier for a request. With ``job`` (the tenant's): its model and checkpoint, which needs a
    succeeded job (409 ``job_not_succeeded``), ``alpha`` as given or the job's recommended one, and its classes
    when no ``labels`` were given. Without: ``model``/``pretrained`` (default the service's default model)
    zero-shot, which must be allowed here and needs ``labels`` (422 ``invalid_labels``). Either way the cost
    is checked (``check_cost``)."""
    checkpoint = sha = None
    if job is not None:
        # 1. A succeeded job's fine-tuned model, as the job's spec and checkpoint row say.
        if job.status != JobStatus.SUCCEEDED or job.checkpoint is None:
            raise ClassifyRefused(
                409, "job_not_succeeded", f"job {job.id} is {job.status}; classify needs a succeeded job"
            )
        spec = stored_spec(job.spec)
        model_spec = ModelSpec(name=spec.model, pretrained=spec.pretrained)
        checkpoint, sha = storage.absolute(job.checkpoint.path), job.checkpoint.sha256
        applied = resolve_alpha(alpha, job.checkpoint.recommended_alpha)
        if labels is None:
            labels = list(job.checkpoint.classes)
        templates = len(spec.templates)  # the checkpoint's, which the job wrote from its spec
    else:
        # 2. A base model, zero-shot.
        model_spec = ModelSpec(name=model or DEFAULT_MODEL, pretrained=pretrained or DEFAULT_PRETRAINED)
        check_model(model_spec.name, model_spec.pretrained, settings)
        if labels is None:
            raise ClassifyRefused(422, "invalid_labels", "zero-shot classification needs labels (a JSON list)")
        applied = 1.0
        templates = len(DEFAULT_TEMPLATES)
    # 3. What answering would cost.
    check_cost(model_spec.name, len(labels), templates, settings)
    return ClassifierChoice(
        model=model_spec, load=replace(model_spec, pretrained=resolve_pretrained(model_spec.pretrained, settings)),
        checkpoint=checkpoint, checkpoint_sha256=sha, alpha=applied, labels=labels, templates=templates,
    )


def decode_upload(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """Decode the ``index``-th uploaded image with the core's decoder, or refuse (422) saying which one is bad
    (``invalid_image``, or ``image_too_large`` over ``max_pixels``, refused from its header)."""
    what = f"image {index}"
    if not data:
        raise ClassifyRefused(422, "invalid_image", f"{what} is empty")
    try:
        return decode_image(data, max_pixels=max_pixels, draft=_DRAFT_SIZE)
    except ImageDecodeError as e:
        if e.code == "image_too_large":
            raise ClassifyRefused(422, e.code, f"{what}: {e.message} (SAFT_MAX_IMAGE_PIXELS)") from e
        raise ClassifyRefused(422, e.code, f"{what} is not a decodable image: {e.message}") from e
