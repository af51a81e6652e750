"""Datasets: turning checked bytes into a stored dataset, and removing one. The API's dataset and upload routes
call these; each refusal is a ``DatasetRefused`` and leaves no file or row behind.

    ingest_archive   an archive (a single upload, a completed multipart upload, an imported file)
    ingest_folder    a folder already on the server, registered in place
    import_path      a server path under an import root: the folder or the archive there
    complete_upload  every part of a multipart upload, read in order as one archive
    delete_dataset   refused while an active job uses it; an external dataset's files stay

An archive: extract it into a private staging folder (``archives.extract_archive``: safe paths, limits, the
tenant's quota), decode every image (the core's loader), rename the folder into the artifact store and write
the row, whose transaction also re-checks the quota; on any failure the staging folder goes and so does a
folder already renamed into place. A folder already on the server: the same checks (``archives.check_folder``),
read in place, nothing copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy import delete
from sqlalchemy.orm import Session

from saft_core.datasets import ImageDataset, load_dataset
from saft_core.errors import DataError

from . import multipart
from .archives import Limits, UploadError, check_folder, extract_archive
from .input_checks import Refused
from .job_datasets import active_job_using
from .settings import Settings
from .storage import Storage, is_storage_full, redact_paths, remove_tree
from .tables import Dataset, Tenant, Upload, new_id, utcnow
from .usage import StorageQuotaExceeded, lock_tenant, tenant_usage

log = logging.getLogger(__name__)

AlsoWrite = Callable[[Session, Dataset], None]
STORAGE_FULL = (507, "storage_full", "the service's storage is full; try again later")
# Refusals of completing an upload that a later try can get past (a full disk, the quota, a part sent wrong):
# the upload is kept for it. Any other refusal comes from the archive itself, so the upload goes.
KEEP_UPLOAD_ON = frozenset({"storage_full", "storage_quota_exceeded", "checksum_mismatch"})


class DatasetRefused(Refused):
    """A dataset is not stored (or not deleted); ``extra`` may name the ``missing_parts``."""


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
    also: AlsoWrite | None,
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
    max_bytes: int | None = None, exclude_upload: str | None = None, also: AlsoWrite | None = None,
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
        # 3. Rename into place and record it.
        dataset_id = new_id("ds")
        final = storage.dataset_dir(dataset_id)
        staging.rename(final)
        row = _dataset_row(dataset_id, tenant, name, storage.relative(final), ds, size, external=False)
        _commit_row(session, settings, row, counted=size, exclude_upload=exclude_upload, also=also)
        final = None
    except UploadError as e:
        raise DatasetRefused(e.status, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except DataError as e:
        raise DatasetRefused(422, e.code, redact_paths(e.message, {staging: "the archive"})) from e
    except StorageQuotaExceeded as e:
        raise DatasetRefused(413, e.code, e.message) from e
    except OSError as e:
        if not is_storage_full(e):
            raise
        raise DatasetRefused(*STORAGE_FULL) from e
    finally:
        # 4. Undo: the staging folder always goes; stored files without a row go too.
        remove_tree(staging)
        if final is not None:
            remove_tree(final)
    log.info("tenant %s stored dataset %s (%d images, %d classes, %d bytes)",
             tenant.name, row.id, row.num_images, len(row.classes), row.size_bytes)
    return row


def ingest_folder(
    folder: Path, *, shown: str, name: str, tenant: Tenant, session: Session, settings: Settings,
    also: AlsoWrite | None = None,
) -> Dataset:
    """Register the ImageFolder ``folder`` (resolved, under an import root) in place as an external dataset.
    ``shown``: the path as the client sent it, used in messages instead of the resolved one; ``also``: more
    writes for the row's transaction (given the row)."""
    try:
        size = check_folder(folder, Limits.of(settings), allowed=settings.resolved_import_roots)
        ds = load_dataset(folder, verify=True, max_pixels=settings.max_image_pixels)
    except UploadError as e:
        raise DatasetRefused(e.status, e.code, redact_paths(e.message, {folder: shown})) from e
    except DataError as e:
        raise DatasetRefused(422, e.code, redact_paths(e.message, {folder: shown})) from e
    row = _dataset_row(new_id("ds"), tenant, name, str(folder), ds, size, external=True)
    session.add(row)
    if also is not None:
        also(session, row)
    session.commit()
    log.info("tenant %s registered dataset %s in place (%d images, %d classes)",
             tenant.name, row.id, row.num_images, len(row.classes))
    return row


def import_target(raw: str, settings: Settings) -> Path:
    """The resolved path of an import, which must be under an import root. A path that leaves the roots is
    refused with one answer whether or not it exists, so the answer tells nothing about the server's files."""
    roots = settings.resolved_import_roots
    if not roots:
        raise DatasetRefused(403, "imports_disabled", "this service registers no server paths (SAFT_IMPORT_ROOTS "
                                                      "is unset); upload the dataset instead")
    refused = DatasetRefused(422, "path_not_allowed", f"{raw[:200]!r} is not under an import root of this service")
    candidate = PurePosixPath(raw)
    if not candidate.is_absolute() or ".." in candidate.parts:
        raise refused
    target = Path(raw).resolve()  # links followed: a link that points out of the roots is refused too
    if not any(target.is_relative_to(root) for root in roots):
        raise refused
    if not target.exists():
        raise DatasetRefused(422, "path_not_found", f"{raw[:200]!r} does not exist")
    return target


def import_path(
    raw: str, *, name: str, tenant: Tenant, session: Session, settings: Settings, storage: Storage,
    also: AlsoWrite | None = None,
) -> Dataset:
    """Register the server path ``raw`` (as the client sent it) under an import root: a folder is read in place
    (``external``), an archive is extracted into the store like an upload."""
    target = import_target(raw, settings)
    if target.is_dir():
        return ingest_folder(target, shown=raw, name=name, tenant=tenant, session=session, settings=settings,
                             also=also)
    with target.open("rb") as f:
        return ingest_archive(f, name=name, tenant=tenant, session=session, settings=settings, storage=storage,
                              also=also)


def complete_upload(
    upload: Upload, *, name: str, tenant: Tenant, session: Session, settings: Settings, storage: Storage,
    also: AlsoWrite | None = None,
) -> Dataset:
    """Turn the multipart ``upload`` (the tenant's, pending) into a dataset; the upload row and its files go.

    Every part must have arrived (409 ``upload_incomplete`` with ``missing_parts``) and no other request may be
    completing it (409 ``upload_completing``). The parts are read in order as one file, checked against the
    declared SHA-256, then ingested as an archive. A refusal in ``KEEP_UPLOAD_ON`` keeps the upload for another
    try (pending again); any other refusal deletes it and says so."""
    upload_id = upload.id
    if upload.status != Upload.PENDING:
        raise DatasetRefused(409, "upload_completing", "another request is completing this upload")
    missing = multipart.missing_parts(upload)
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise DatasetRefused(409, "upload_incomplete", f"{len(missing)} of {upload.parts_total} parts are "
                                                       f"missing: {shown}", missing_parts=missing)
    if not multipart.start_completing(session, upload_id):
        raise DatasetRefused(409, "upload_completing", "another request is completing this upload")
    # A multipart archive may extract to SAFT_MAX_EXTRACTED_BYTES or to four times its own size, whichever is
    # larger (images barely compress; a bomb cannot grow much), and never past the tenant's quota.
    max_bytes = max(settings.max_extracted_bytes, 4 * upload.size_bytes)

    def replaces_upload(s: Session, row: Dataset) -> None:  # in the dataset's transaction
        s.execute(delete(Upload).where(Upload.id == upload_id))
        if also is not None:
            also(s, row)

    kept = True
    try:
        with multipart.CompletingBeat(settings, upload_id), multipart.open_parts(storage, upload) as reader:
            if upload.sha256 is not None:
                got = multipart.sha256_of(reader)
                if got != upload.sha256:
                    raise DatasetRefused(422, "checksum_mismatch", f"the file's SHA-256 is {got}, not "
                                                                   f"{upload.sha256} as declared; compare the "
                                                                   "parts' hashes with yours and resend those "
                                                                   "that differ")
            row = ingest_archive(
                reader, name=name, tenant=tenant, session=session, settings=settings, storage=storage,
                max_bytes=max_bytes, exclude_upload=upload_id, also=replaces_upload,
            )
        kept = False
    except DatasetRefused as e:
        if e.code in KEEP_UPLOAD_ON:
            raise
        session.rollback()
        multipart.delete_upload(session, storage, upload_id)
        kept = False
        raise DatasetRefused(e.status, e.code, f"{e.message} (the upload was deleted)", **e.extra) from e
    finally:
        if kept:
            multipart.back_to_pending(session, upload_id)
    multipart.remove_upload_files(storage, upload_id)
    return row


def delete_dataset(session: Session, storage: Storage, dataset: Dataset) -> None:
    """Delete ``dataset``'s row, then its files (an external dataset's files are the operator's and stay).
    Refused (409 ``dataset_in_use``) while a queued or running job trains or evaluates on it."""
    job = active_job_using(session, dataset.id)
    if job is not None:
        raise DatasetRefused(409, "dataset_in_use", f"job {job.id} ({job.status}) uses this dataset; cancel it "
                                                    "first")
    path = None if dataset.external else storage.absolute(dataset.path)
    session.delete(dataset)
    session.commit()
    if path is not None:
        remove_tree(path)

