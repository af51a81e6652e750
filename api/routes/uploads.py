"""Multipart, resumable uploads of large dataset archives: create, send parts (any order, in parallel, again),
list what arrived, complete into a dataset, abort. See saft_service/multipart.py for the life of an upload."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from saft_service import datasets, multipart
from saft_service.input_checks import ID_PATTERN
from saft_service.storage import Storage, is_storage_full
from saft_service.tables import Tenant, Upload, utcnow
from saft_service.usage import StorageQuotaExceeded

from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep
from ..idempotent_route import IDEMPOTENCY_RESPONSES, IDEMPOTENT, IdempotentAnswer, IdempotentRoute
from ..pagination import newest_first_page
from ..problems import AUTH_RESPONSES, INVALID, NOT_FOUND, TOO_LARGE, ProblemError, problem_doc
from ..schemas import (
    DatasetPublic,
    UploadComplete,
    UploadCreate,
    UploadPartPublic,
    UploadPublic,
    UploadsPublic,
)

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1/uploads", tags=["uploads"], responses=AUTH_RESPONSES, route_class=IdempotentRoute
)

UploadId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
GONE: dict[int | str, dict[str, Any]] = {410: problem_doc("`upload_expired`: the upload passed its `expires_at` and was deleted.")}
BUSY: dict[int | str, dict[str, Any]] = {409: problem_doc("`upload_completing`: the upload is being completed; `upload_incomplete`: parts are missing.")}
WRITE_CHUNK = 1 << 20  # bytes gathered into one block for the part's writer thread


def _tenant_upload(session: Session, storage: Storage, tenant: Tenant, upload_id: str) -> Upload:
    return multipart.tenant_upload(session, storage, tenant.id, upload_id)


@router.post(
    "",
    response_model=UploadPublic,
    status_code=201,
    summary="Start a multipart upload",
    responses={**INVALID, **TOO_LARGE, **IDEMPOTENCY_RESPONSES},
    dependencies=[IDEMPOTENT],
)
def create_upload(
    body: UploadCreate, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep, answer: IdempotentAnswer
) -> UploadPublic:
    """Declare the file (name, size, optionally its SHA-256); the answer says how to cut it: `part_size` and
    `parts_total`. Then `PUT` each part, in any order and in parallel, and `complete`. The declared size counts
    against the tenant's storage quota at once (413 `storage_quota_exceeded` if it does not fit)."""
    try:
        upload = multipart.create_upload(
            session, settings, tenant_id=tenant.id, filename=body.filename, size=body.size, sha256=body.sha256,
            also=lambda s, u: answer(s, 201, UploadPublic.of(u)),
        )
    except StorageQuotaExceeded as e:
        raise ProblemError(413, e.code, e.message) from e
    log.info("tenant %s started upload %s (%d bytes in %d parts)", tenant.name, upload.id, upload.size_bytes,
             upload.parts_total)
    return UploadPublic.of(upload)


@router.get("", response_model=UploadsPublic, summary="List uploads in flight, newest first")
def list_uploads(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> UploadsPublic:
    stmt = select(Upload).where(Upload.tenant_id == tenant.id, Upload.expires_at >= utcnow())
    rows, next_cursor = newest_first_page(session, stmt, Upload, limit=limit, cursor=cursor)
    return UploadsPublic(data=[UploadPublic.of(u) for u in rows], next_cursor=next_cursor)


@router.get("/{upload_id}", response_model=UploadPublic, responses={**NOT_FOUND, **GONE}, summary="Get an upload")
def get_upload(upload_id: UploadId, tenant: CurrentTenant, session: SessionDep, storage: StorageDep) -> UploadPublic:
    """The parts received so far with their SHA-256: resend the ones missing or different from yours."""
    return UploadPublic.of(_tenant_upload(session, storage, tenant, upload_id))


def _expected_sha256(x_checksum: str | None, content_digest: str | None) -> str | None:
    """The part's SHA-256 from ``X-Checksum-SHA256: <hex>`` or ``Content-Digest: sha-256=:<base64>:`` (RFC 9530)."""
    if x_checksum is not None:
        value = x_checksum.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ProblemError(422, "invalid_checksum_header", "X-Checksum-SHA256 must be 64 hexadecimal digits")
        return value
    if content_digest is None:
        return None
    for item in content_digest.split(","):
        algorithm, _, value = item.strip().partition("=")
        if algorithm.strip().lower() == "sha-256":
            try:
                raw = base64.b64decode(value.strip().strip(":"), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ProblemError(422, "invalid_checksum_header", "Content-Digest's sha-256 must be 32 bytes in base64")
            return raw.hex()
    return None  # only algorithms we do not check


@router.put(
    "/{upload_id}/parts/{number}",
    response_model=UploadPartPublic,
    summary="Send one part",
    responses={**NOT_FOUND, **GONE, **BUSY, **INVALID, 413: problem_doc("`part_too_large`: more bytes than the part has."),
               507: problem_doc("`storage_full`: the part was not kept; send it again later.")},
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }},
)
async def put_part(
    request: Request,
    upload_id: UploadId,
    number: Annotated[int, Path(description="1 to parts_total.")],
    tenant: CurrentTenant,
    session: SessionDep,
    storage: StorageDep,
    x_checksum_sha256: Annotated[str | None, Header(description="The part's SHA-256, hex; checked.")] = None,
    content_digest: Annotated[str | None, Header(description="`sha-256=:<base64>:` (RFC 9530); checked.")] = None,
) -> UploadPartPublic:
    """The raw bytes of part `number`: exactly `part_size` bytes, the last part the rest. Sending a part again
    replaces it. The part is streamed to disk (never held in memory) and kept only if its size and checksum
    are right."""
    upload = await run_in_threadpool(_tenant_upload, session, storage, tenant, upload_id)
    await run_in_threadpool(session.commit)  # no connection held while the bytes arrive
    if upload.status != Upload.PENDING:
        raise ProblemError(409, "upload_completing", "the upload is being completed; parts can no longer change")
    if not 1 <= number <= upload.parts_total:
        raise ProblemError(422, "part_out_of_range", f"part {number} is out of range: this upload has parts 1 to "
                                                     f"{upload.parts_total}")
    expected = upload.part_bytes(number)
    too_large = ProblemError(413, "part_too_large", f"part {number} must be {expected} bytes; more were sent",
                             headers={"Connection": "close"})
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > expected:
        raise too_large
    want = _expected_sha256(x_checksum_sha256, content_digest)
    tmp = multipart.temp_part_path(storage, upload_id, number)
    final = multipart.part_path(storage, upload_id, number)
    await anyio.to_thread.run_sync(lambda: tmp.parent.mkdir(parents=True, exist_ok=True))
    size = 0
    try:
        writer = await anyio.to_thread.run_sync(multipart.PartWriter, tmp)
    except FileNotFoundError as e:  # aborted between the read of its row and here
        raise ProblemError(404, "upload_not_found", f"upload {upload_id} was deleted") from e
    closed = False
    try:
        block: list[bytes] = []
        gathered = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > expected:
                raise too_large
            block.append(chunk)
            gathered += len(chunk)
            if gathered >= WRITE_CHUNK:  # hand over; receiving goes on while the writer writes and hashes
                if not writer.offer(block):
                    await anyio.to_thread.run_sync(writer.put, block)
                block, gathered = [], 0
        if block:
            await anyio.to_thread.run_sync(writer.put, block)
        closed = True
        got = await anyio.to_thread.run_sync(writer.close)
        if size != expected:
            raise ProblemError(422, "part_size_mismatch", f"part {number} must be {expected} bytes; {size} were sent")
        if want is not None and got != want:
            raise ProblemError(422, "checksum_mismatch", f"part {number}'s SHA-256 is {got}, not {want} as declared; "
                                                         "send it again")
        await run_in_threadpool(multipart.store_part, session, upload_id, number, size, got, tmp, final)
    except ClientDisconnect:
        log.info("upload %s: the client went away during part %d", upload_id, number)
        raise
    except FileNotFoundError as e:  # the upload was aborted or expired (its folder removed) while this part came
        raise ProblemError(404, "upload_not_found", f"upload {upload_id} was deleted") from e
    except OSError as e:
        if not is_storage_full(e):
            raise
        raise ProblemError(507, "storage_full", "the service's storage is full; send the part again later") from e
    finally:
        if not closed:
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(writer.close)
        await anyio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))  # renamed away on success
    return UploadPartPublic(number=number, size=size, sha256=got)


@router.post(
    "/{upload_id}/complete",
    response_model=DatasetPublic,
    status_code=201,
    summary="Complete an upload into a dataset",
    responses={**NOT_FOUND, **GONE, **BUSY, **INVALID, **TOO_LARGE, **IDEMPOTENCY_RESPONSES,
               415: problem_doc("The file is not a .zip, .tar or .tar.gz archive."),
               507: problem_doc("The service's storage is full (`storage_full`); the upload is kept.")},
    dependencies=[IDEMPOTENT],
)
def complete_upload(
    upload_id: UploadId, body: UploadComplete, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep,
    storage: StorageDep, answer: IdempotentAnswer,
) -> DatasetPublic:
    """Every part must have arrived (409 `upload_incomplete` names the missing ones in `missing_parts`). The
    parts are read in order as one file, checked against the declared SHA-256 (422 `checksum_mismatch`: the
    upload is kept; compare the parts' hashes with yours and resend the ones that differ), then checked and
    extracted exactly as `POST /v1/datasets` does. The answer is the dataset, and the upload is gone. An archive
    the checks refuse deletes the upload too; a full disk or the quota keeps it for another try."""
    upload = _tenant_upload(session, storage, tenant, upload_id)
    row = datasets.complete_upload(upload, name=body.name, tenant=tenant, session=session, settings=settings,
                                   storage=storage, also=lambda s, row: answer(s, 201, DatasetPublic.of(row)))
    return DatasetPublic.of(row)


@router.delete(
    "/{upload_id}", status_code=204, responses={**NOT_FOUND, **GONE, **BUSY}, summary="Abort an upload"
)
def abort_upload(upload_id: UploadId, tenant: CurrentTenant, session: SessionDep, storage: StorageDep) -> Response:
    """Deletes the upload and every part received; its reserved bytes are freed."""
    upload = _tenant_upload(session, storage, tenant, upload_id)
    if upload.status != Upload.PENDING:
        raise ProblemError(409, "upload_completing", "the upload is being completed; wait for the answer")
    multipart.delete_upload(session, storage, upload_id)
    return Response(status_code=204)


