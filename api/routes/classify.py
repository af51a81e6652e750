"""Classify images with a base model (zero-shot) or a finished job's fine-tuned model."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import Field

from saft_core.frontier import DEFAULT_ALPHA
from saft_service.classify_request import choose_classifier, decode_upload, parse_labels
from saft_service.input_checks import ID_PATTERN, LimitError
from saft_service.metrics import CLASSIFY_IMAGES, CLASSIFY_SECONDS

from ..classifier_cache import ClassifierCache
from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, tenant_job
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
    job = tenant_job(session, tenant, job_id) if job_id else None
    choice = choose_classifier(job=job, model=model, pretrained=pretrained, labels=label_list, alpha=alpha,
                               settings=settings, storage=storage)
    session.commit()  # decoding and inference take seconds: hold no database connection through them
    started = time.perf_counter()
    pictures = [decode_upload(f.file.read(), i, settings.max_image_pixels) for i, f in enumerate(images)]
    cache: ClassifierCache = request.app.state.classifiers
    k = min(top_k, len(choice.labels))
    clf, results = cache.run(
        choice.load, choice.checkpoint, choice.checkpoint_sha256, choice.alpha,
        lambda c: c.classify(pictures, labels=choice.labels, top_k=k),
    )
    kind = "fine_tuned" if choice.fine_tuned else "zero_shot"
    CLASSIFY_IMAGES.labels(kind).inc(len(pictures))
    CLASSIFY_SECONDS.labels(kind).observe(time.perf_counter() - started)
    return ClassifyPublic(
        model=choice.model.name,
        pretrained=choice.model.pretrained,
        job_id=job_id,
        alpha=choice.alpha if choice.fine_tuned else None,
        labels=choice.labels,
        results=[
            ImagePredictions(
                filename=f.filename, predictions=[Prediction(label=lbl, score=p) for lbl, p in preds]
            )
            for f, preds in zip(images, results, strict=True)
        ],
    )
