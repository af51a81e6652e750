"""Datasets: upload an ImageFolder archive, list, read, delete."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from sqlalchemy import select

from saft_core.datasets import load_dataset
from saft_core.errors import DataError
from saft_service.job_datasets import active_job_using
from saft_service.limits import NO_CONTROL_CHARACTERS
from saft_service.storage import is_storage_full, redact_paths, remove_tree
from saft_service.tables import Dataset, new_id, utcnow

from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, TenantDataset
from ..idempotency import IDEMPOTENCY_RESPONSES, IDEMPOTENT, IdempotentRoute
from ..pagination import newest_first_page
from ..problems import AUTH_RESPONSES, CONFLICT, INVALID, NOT_FOUND, TOO_LARGE, ProblemError, problem_doc
from ..schemas import DatasetPublic, DatasetsPublic
from ..uploads import Limits, UploadError, extract_archive

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], responses=AUTH_RESPONSES, route_class=IdempotentRoute
)


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=201,
    summary="Upload a dataset",
    responses={
        **INVALID,
        **TOO_LARGE,
        **IDEMPOTENCY_RESPONSES,
        415: problem_doc("The file is not a .zip, .tar or .tar.gz archive."),
        507: problem_doc("The service's storage is full (`storage_full`); nothing was stored."),
    },
    dependencies=[IDEMPOTENT],
)
def create_dataset(
    file: Annotated[
        UploadFile, File(description="A .zip, .tar or .tar.gz of <class>/<image> (+ classes.json).")
    ],
    name: Annotated[
        str, Form(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS, description="A name for people.")
    ],
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> DatasetPublic:
    """The archive is checked (safe paths, no links, size and count limits, ImageFolder layout, every image
    decodable) before anything is stored; a refused upload leaves nothing behind."""
    storage.ensure()
    staging = storage.staging / new_id("up")
    final = None
    try:
        # 1. Check and extract into a private staging folder.
        size = extract_archive(file.file, staging, Limits.of(settings))
        # 2. The core's loader decodes every image (none over the pixel limit) and checks the classes.
        ds = load_dataset(staging, verify=True, max_pixels=settings.max_image_pixels)
        # 3. Move into place and record it.
        dataset_id = new_id("ds")
        final = storage.dataset_dir(dataset_id)
        staging.rename(final)
        row = Dataset(
            id=dataset_id,
            tenant_id=tenant.id,
            name=name.strip() or dataset_id,
            status="ready",
            path=storage.relative(final),
            num_images=len(ds),
            classes=list(ds.classes),
            class_names=list(ds.class_names),
            counts=ds.counts(),
            size_bytes=size,
            created_at=utcnow(),
        )
        session.add(row)
        session.commit()
        final = None
    except UploadError as e:
        raise ProblemError(e.status, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except DataError as e:
        raise ProblemError(422, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except OSError as e:
        if not is_storage_full(e):
            raise
        raise ProblemError(507, "storage_full", "the service's storage is full; try again later") from e
    finally:
        remove_tree(staging)
        if final is not None:  # stored files but no row: undo
            remove_tree(final)
    log.info(
        "tenant %s uploaded dataset %s (%d images, %d classes)",
        tenant.name,
        row.id,
        row.num_images,
        len(row.classes),
    )
    return DatasetPublic.of(row)


@router.get("", response_model=DatasetsPublic, summary="List datasets, newest first")
def list_datasets(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DatasetsPublic:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant.id)
    rows, next_cursor = newest_first_page(session, stmt, Dataset, limit=limit, cursor=cursor)
    return DatasetsPublic(data=[DatasetPublic.of(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=NOT_FOUND, summary="Get a dataset")
def get_dataset(dataset: TenantDataset) -> DatasetPublic:
    return DatasetPublic.of(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a dataset and its files",
)
def delete_dataset(dataset: TenantDataset, session: SessionDep, storage: StorageDep) -> Response:
    """Refused (409 dataset_in_use) while a queued or running job trains or evaluates on it."""
    job = active_job_using(session, dataset.id)
    if job is not None:
        raise ProblemError(409, "dataset_in_use", f"job {job.id} ({job.status}) uses this dataset; cancel it first")
    path = storage.absolute(dataset.path)
    session.delete(dataset)
    session.commit()
    remove_tree(path)
    return Response(status_code=204)
