"""Classify images with a base model (zero-shot) or a finished job's fine-tuned model."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import Field

from saft_core.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEFAULT_TEMPLATES, ModelSpec
from saft_core.frontier import DEFAULT_ALPHA, resolve_alpha
from saft_service.allowed_models import check_model, resolve_pretrained
from saft_service.input_checks import ID_PATTERN, LimitError
from saft_service.jobs import JobStatus
from saft_service.jobspec import stored_spec
from saft_service.metrics import CLASSIFY_IMAGES, CLASSIFY_SECONDS
from saft_service.tables import Job

from ..classifier_cache import ClassifierCache, check_cost, decode_upload, parse_labels
from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep
from ..problems import CONFLICT, INVALID, NOT_FOUND, TOO_LARGE, UNAVAILABLE, ProblemError
from ..schemas import ClassifyPublic, ImagePredictions, Prediction

router = APIRouter(prefix="/v1/classify", tags=["classify"])


@router.post(
    "",
    response_model=ClassifyPublic,
    responses={**INVALID, **NOT_FOUND, **CONFLICT, **TOO_LARGE, **UNAVAILABLE},
    summary="Classify images",
)
def classify(
    request: Request,
    images: Annotated[list[UploadFile], File(description="One or more images.")],
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    job_id: Annotated[
        str | None, Form(max_length=40, pattern=ID_PATTERN, description="A succeeded job: use its model.")
    ] = None,
    model: Annotated[str | None, Form(max_length=200, description="Zero-shot with this base model.")] = None,
    pretrained: Annotated[
        str | None, Form(max_length=500, description="Weights of `model` (default: its default weights).")
    ] = None,
    labels: Annotated[
        str | None,
        Form(description='JSON list, e.g. ["cat", "dog"]. Default with job_id: the job\'s classes.'),
    ] = None,
    alpha: Annotated[
        Annotated[float, Field(ge=0.0, le=1.0)] | Literal["recommended"],
        Form(
            description="With job_id: 1 = fine-tuned, 0 = base, between = interpolated, `recommended` = the "
            "alpha the job recommends (1 when it has none). The response says which alpha was applied."
        ),
    ] = DEFAULT_ALPHA,
    top_k: Annotated[int, Form(ge=1, le=100, description="Labels returned per image.")] = 5,
) -> ClassifyPublic:
    """Give `job_id` for a fine-tuned model (its classes are the default labels) or `model` (default
    saft-tiny) for zero-shot with your `labels`. Scores are probabilities over the labels."""
    if job_id and model:
        raise ProblemError(422, "validation_error", "give job_id or model, not both")
    if len(images) > settings.max_classify_images:
        raise LimitError(
            "too_many_images",
            f"{len(images)} images; the limit is {settings.max_classify_images} (SAFT_MAX_CLASSIFY_IMAGES)",
            status=413,
        )
    label_list = parse_labels(labels, settings)
    checkpoint = sha = None
    if job_id:
        job = session.get(Job, job_id)
        if job is None or job.tenant_id != tenant.id:
            raise ProblemError(404, "job_not_found", f"no job {job_id} in this tenant")
        if job.status != JobStatus.SUCCEEDED or job.checkpoint is None:
            raise ProblemError(
                409, "job_not_succeeded", f"job {job_id} is {job.status}; classify needs a succeeded job"
            )
        spec = stored_spec(job.spec)
        model_spec = ModelSpec(name=spec.model, pretrained=spec.pretrained)
        checkpoint, sha = storage.absolute(job.checkpoint.path), job.checkpoint.sha256
        alpha = resolve_alpha(alpha, job.checkpoint.recommended_alpha)
        if label_list is None:
            label_list = list(job.checkpoint.classes)
        templates = len(spec.templates)  # the checkpoint's, which the job wrote from its spec
    else:
        model_spec = ModelSpec(name=model or DEFAULT_MODEL, pretrained=pretrained or DEFAULT_PRETRAINED)
        check_model(model_spec.name, model_spec.pretrained, settings)
        if label_list is None:
            raise ProblemError(422, "invalid_labels", "zero-shot classification needs labels (a JSON list)")
        alpha = 1.0
        templates = len(DEFAULT_TEMPLATES)
    check_cost(model_spec.name, len(label_list), templates, settings)
    session.commit()  # decoding and inference take seconds: hold no database connection through them
    started = time.perf_counter()
    pictures = [decode_upload(f.file.read(), i, settings.max_image_pixels) for i, f in enumerate(images)]
    load_spec = replace(model_spec, pretrained=resolve_pretrained(model_spec.pretrained, settings))
    cache: ClassifierCache = request.app.state.classifiers
    k = min(top_k, len(label_list))
    clf, results = cache.run(
        load_spec, checkpoint, sha, alpha, lambda c: c.classify(pictures, labels=label_list, top_k=k)
    )
    kind = "fine_tuned" if job_id else "zero_shot"
    CLASSIFY_IMAGES.labels(kind).inc(len(pictures))
    CLASSIFY_SECONDS.labels(kind).observe(time.perf_counter() - started)
    return ClassifyPublic(
        model=model_spec.name,
        pretrained=model_spec.pretrained,
        job_id=job_id,
        alpha=alpha if job_id else None,
        labels=label_list,
        results=[
            ImagePredictions(
                filename=f.filename, predictions=[Prediction(label=lbl, score=p) for lbl, p in preds]
            )
            for f, preds in zip(images, results, strict=True)
        ],
    )
