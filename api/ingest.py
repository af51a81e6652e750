"""Turning checked bytes into a stored dataset: the one sequence behind a single upload, a completed multipart
upload and an import of a server path.

An archive: extract it into a private staging folder (``uploads.extract_archive``: safe paths, limits, the
tenant's quota), decode every image (the core's loader), move the folder into the artifact store and write
the row, whose transaction also re-checks the quota. A folder already on the server: the same checks
(``uploads.check_folder``), read in place, nothing copied. Any refusal is a ``ProblemError`` and leaves no
file or row behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from saft_core.datasets import ImageDataset, load_dataset
from saft_core.errors import DataError
from saft_service.settings import Settings
from saft_service.storage import Storage, is_storage_full, redact_paths, remove_tree
from saft_service.tables import Dataset, Tenant, new_id, utcnow
from saft_service.usage import StorageQuotaExceeded, lock_tenant, tenant_usage

from .problems import ProblemError
from .uploads import Limits, UploadError, check_folder, extract_archive

log = logging.getLogger(__name__)

STORAGE_FULL = (507, "storage_full", "the service's storage is full; try again later")


def _dataset_row(
    dataset_id: str, tenant: Tenant, name: str, path: str, ds: ImageDataset, size: int, *, external: bool
) -> Dataset:
    return Dataset(
        id=dataset_id, tenant_id=tenant.id, name=name.strip() or dataset_id, status="ready", path=path,
        num_images=len(ds), classes=list(ds.classes), class_names=list(ds.class_names), counts=ds.counts(),
        size_bytes=size, external=external, created_at=utcnow(),
    )


def _commit_row(
    session: Session, settings: Settings, row: Dataset, *, counted: int, exclude_upload: str | None,
    also: Callable[[Session, Dataset], None] | None,
) -> None:
    """Write ``row`` (and whatever ``also`` writes, e.g. deleting the upload it came from) in one transaction
    that first checks that ``counted`` more bytes fit the tenant's quota."""
    lock_tenant(session, row.tenant_id)
    tenant_usage(session, row.tenant_id, settings, exclude_upload=exclude_upload).check(counted)
    session.add(row)
    if also is not None:
        also(session, row)
    session.commit()


def ingest_archive(
    fileobj: BinaryIO, *, name: str, tenant: Tenant, session: Session, settings: Settings, storage: Storage,
    max_bytes: int | None = None, exclude_upload: str | None = None,
    also: Callable[[Session, Dataset], None] | None = None,
) -> Dataset:
    """Check, extract and store the archive in ``fileobj`` as a dataset of ``tenant``. ``max_bytes``: the
    extraction limit (default ``SAFT_MAX_EXTRACTED_BYTES``); ``exclude_upload``: an upload whose reservation
    this dataset replaces; ``also``: more writes for the row's transaction (given the row)."""
    storage.ensure()
    usage = tenant_usage(session, tenant.id, settings, exclude_upload=exclude_upload)
    session.commit()  # no connection held through the extraction
    staging = storage.staging / new_id("up")
    final: Path | None = None
    try:
        # 1. Check and extract into a private staging folder.
        size = extract_archive(fileobj, staging, Limits.of(settings, max_bytes=max_bytes, quota_bytes=usage.left))
        # 2. The core's loader decodes every image (none over the pixel limit) and checks the classes.
        ds = load_dataset(staging, verify=True, max_pixels=settings.max_image_pixels)
        # 3. Move into place and record it.
        dataset_id = new_id("ds")
        final = storage.dataset_dir(dataset_id)
        staging.rename(final)
        row = _dataset_row(dataset_id, tenant, name, storage.relative(final), ds, size, external=False)
        _commit_row(session, settings, row, counted=size, exclude_upload=exclude_upload, also=also)
        final = None
    except UploadError as e:
        raise ProblemError(e.status, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except DataError as e:
        raise ProblemError(422, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except StorageQuotaExceeded as e:
        raise ProblemError(413, e.code, e.message) from e
    except OSError as e:
        if not is_storage_full(e):
            raise
        raise ProblemError(*STORAGE_FULL) from e
    finally:
        remove_tree(staging)
        if final is not None:  # stored files but no row: undo
            remove_tree(final)
    log.info("tenant %s stored dataset %s (%d images, %d classes, %d bytes)",
             tenant.name, row.id, row.num_images, len(row.classes), row.size_bytes)
    return row


def ingest_folder(
    folder: Path, *, shown: str, name: str, tenant: Tenant, session: Session, settings: Settings,
    also: Callable[[Session, Dataset], None] | None = None,
) -> Dataset:
    """Register the ImageFolder ``folder`` (resolved, under an import root) in place as an external dataset.
    ``shown``: the path as the client sent it, used in messages instead of the resolved one; ``also``: more
    writes for the row's transaction (given the row)."""
    try:
        size = check_folder(folder, Limits.of(settings), allowed=settings.resolved_import_roots)
        ds = load_dataset(folder, verify=True, max_pixels=settings.max_image_pixels)
    except UploadError as e:
        raise ProblemError(e.status, e.code, redact_paths(e.message, {folder: shown})) from e
    except DataError as e:
        raise ProblemError(422, e.code, redact_paths(e.message, {folder: shown})) from e
    row = _dataset_row(new_id("ds"), tenant, name, str(folder), ds, size, external=True)
    session.add(row)
    if also is not None:
        also(session, row)
    session.commit()
    log.info("tenant %s registered dataset %s in place (%d images, %d classes)",
             tenant.name, row.id, row.num_images, len(row.classes))
    return row
