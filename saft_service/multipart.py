"""Multipart, resumable uploads: a large file sent in parts, in any order and in parallel, then completed.

    create   -> an ``Upload`` row (its declared size reserved against the tenant's quota) and a part plan
    part n   -> ``<data dir>/uploads/<id>/<n>.part``, written under a temporary name and renamed into place,
                and an ``UploadPart`` row with its size and SHA-256 (a part sent again replaces the first)
    complete -> the parts read in order as one file (``PartsReader``: no assembled copy is written), checked
                against the whole file's SHA-256 when one was declared, extracted as an uploaded archive is
    abort    -> the row and the folder deleted; the reaper does the same once ``expires_at`` passes

A part is only renamed into place inside a transaction that has just written the upload row while it was
``pending``; completing first moves the row to ``completing`` with a compare-and-set. On Postgres the row lock
orders the two, on SQLite the single writer does: once a completion has started, no part changes under it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import affected_rows, session_scope
from .input_checks import Refused
from .periodic import Periodic
from .settings import Settings
from .storage import Storage, remove_tree
from .tables import Upload, UploadPart, new_id, utcnow
from .usage import lock_tenant, tenant_usage

log = logging.getLogger(__name__)

MiB = 1 << 20
PART_SUFFIX = ".part"
# Leftover folders with no upload row (an API process that died between the two) are removed after this long.
ORPHAN_GRACE_S = 3600
# A completing upload's request writes a beat this often; without one for this long, its process is presumed
# dead and the upload is pending again.
COMPLETING_BEAT_S = 30.0
COMPLETING_STALE_S = 300.0


class MultipartError(Refused):
    """A multipart request is refused."""


def plan_parts(size: int, settings: Settings) -> tuple[int, int]:
    """(part size, number of parts) for a file of ``size`` bytes: ``SAFT_UPLOAD_PART_BYTES``, made larger (in
    whole MiB) when the file would need more than ``SAFT_MAX_UPLOAD_PARTS`` parts."""
    part = settings.upload_part_bytes
    if -(-size // part) > settings.max_upload_parts:
        part = -(-size // settings.max_upload_parts)
        part = -(-part // MiB) * MiB
    return part, max(1, -(-size // part))


def create_upload(
    session: Session, settings: Settings, *, tenant_id: str, filename: str, size: int, sha256: str | None,
    also: Callable[[Session, Upload], None] | None = None,
) -> Upload:
    """A new upload of ``size`` bytes, its size reserved against the quota (raises ``StorageQuotaExceeded``) and
    ``MultipartError`` past ``SAFT_MAX_MULTIPART_BYTES``. Committed, with whatever ``also`` writes (the API's
    idempotent answer)."""
    if size > settings.max_multipart_bytes:
        raise MultipartError(
            413, "upload_too_large",
            f"the file is {size:,} bytes; the limit is {settings.max_multipart_bytes:,} (SAFT_MAX_MULTIPART_BYTES)",
        )
    part_size, parts_total = plan_parts(size, settings)
    now = utcnow()
    lock_tenant(session, tenant_id)
    tenant_usage(session, tenant_id, settings).check(size)
    upload = Upload(
        id=new_id("upl"), tenant_id=tenant_id, filename=filename, size_bytes=size, sha256=sha256,
        part_size=part_size, parts_total=parts_total, status=Upload.PENDING, created_at=now, updated_at=now,
        expires_at=now + timedelta(seconds=settings.upload_ttl),
    )
    session.add(upload)
    if also is not None:
        also(session, upload)
    session.commit()
    return upload


def part_path(storage: Storage, upload_id: str, number: int) -> Path:
    return storage.upload_dir(upload_id) / f"{number}{PART_SUFFIX}"


def temp_part_path(storage: Storage, upload_id: str, number: int) -> Path:
    """A private name for a part being received (parallel sends of one part do not meet)."""
    return storage.upload_dir(upload_id) / f".{number}.{new_id('tmp')}"


class PartWriter:
    """Writes and hashes a part's bytes in a thread of its own while the caller (the event loop) receives the
    next ones: blocks of chunks go through a queue of at most ``max_blocks``, so memory stays bounded and
    receiving overlaps writing. ``close()`` waits for the thread and answers the SHA-256 (raising what the
    writes raised, e.g. a full disk)."""

    def __init__(self, path: Path, max_blocks: int = 4) -> None:
        self.digest = hashlib.sha256()
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(max_blocks)
        self._error: BaseException | None = None
        self._file = path.open("xb")
        self._thread = threading.Thread(target=self._run, name=f"part-writer-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining, so that a producer never blocks on a dead writer
            try:
                for chunk in block:
                    self._file.write(chunk)
                    self.digest.update(chunk)
            except BaseException as e:  # reported by close()
                self._error = e

    def offer(self, block: list[bytes]) -> bool:
        """Queue ``block`` without waiting; False when the queue is full (then ``put`` it from a thread)."""
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            return False
        return True

    def put(self, block: list[bytes]) -> None:
        self._queue.put(block)

    def close(self) -> str:
        """Wait for every queued block to be written; the part's SHA-256 (hex)."""
        self._queue.put(None)
        self._thread.join()
        self._file.close()
        if self._error is not None:
            raise self._error
        return self.digest.hexdigest()


def tenant_upload(session: Session, storage: Storage, tenant_id: str, upload_id: str) -> Upload:
    """The tenant's upload: 404 ``upload_not_found`` when unknown or another tenant's; 410 ``upload_expired``
    (and deleted) once past its ``expires_at``."""
    upload = session.get(Upload, upload_id)
    if upload is None or upload.tenant_id != tenant_id:
        raise MultipartError(404, "upload_not_found", f"no upload {upload_id} in this tenant")
    if upload.expires_at < utcnow():
        delete_upload(session, storage, upload_id)
        raise MultipartError(410, "upload_expired", f"upload {upload_id} expired at {upload.expires_at.isoformat()}; "
                                                    "start a new one")
    return upload


def store_part(
    session: Session, upload_id: str, number: int, size: int, digest: str, received: Path, final: Path
) -> None:
    """Rename the ``received`` part to ``final`` and record it, while the upload is still pending: 409
    ``upload_completing`` once a completion started, 404 ``upload_not_found`` once it was deleted."""
    gone = MultipartError(404, "upload_not_found", f"upload {upload_id} was deleted")
    try:
        if not hold_pending(session, upload_id):
            session.rollback()
            if session.get(Upload, upload_id) is None:
                raise gone
            raise MultipartError(409, "upload_completing", "the upload is being completed; parts can no longer change")
        session.merge(UploadPart(upload_id=upload_id, number=number, size_bytes=size, sha256=digest,
                                 created_at=utcnow()))
        os.replace(received, final)
        session.commit()
    except IntegrityError as e:  # the upload was deleted (aborted, expired) while the part arrived
        session.rollback()
        raise gone from e


def hold_pending(session: Session, upload_id: str) -> bool:
    """Write the upload row while it is ``pending`` (a compare-and-set that takes the row's write lock until the
    transaction ends). False: it is completing, or gone."""
    return affected_rows(
        session,
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == Upload.PENDING)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False),
    ) == 1


def start_completing(session: Session, upload_id: str) -> bool:
    """Move a pending upload to ``completing`` (committed). False: another request is completing it."""
    moved = affected_rows(
        session,
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == Upload.PENDING)
        .values(status=Upload.COMPLETING, updated_at=utcnow())
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return moved == 1


class CompletingBeat:
    """While a request completes an upload (minutes for a large one), a thread writes the row's ``updated_at``
    every ``COMPLETING_BEAT_S`` seconds, so that the reaper can tell a completion in progress from one whose
    process died (``COMPLETING_STALE_S`` without a beat: the upload goes back to ``pending`` and can be
    completed again)."""

    def __init__(self, settings: Settings, upload_id: str) -> None:
        self._settings, self._upload_id = settings, upload_id
        self._thread = Periodic(f"completing-{upload_id}", COMPLETING_BEAT_S, self._beat, join_timeout=10)

    def __enter__(self) -> CompletingBeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.stop()

    def _beat(self) -> None:
        try:
            with session_scope(self._settings) as s:
                s.execute(update(Upload).where(Upload.id == self._upload_id, Upload.status == Upload.COMPLETING)
                          .values(updated_at=utcnow()).execution_options(synchronize_session=False))
        except Exception as e:  # a missed beat is retried; the reaper waits several
            log.warning("upload %s: completing beat not written (%s)", self._upload_id, type(e).__name__)


def back_to_pending(session: Session, upload_id: str) -> None:
    """A completion that did not finish: the upload can be completed (or its parts resent) again."""
    session.rollback()
    session.execute(
        update(Upload)
        .where(Upload.id == upload_id, Upload.status == Upload.COMPLETING)
        .values(status=Upload.PENDING, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def delete_upload(session: Session, storage: Storage, upload_id: str) -> None:
    """Delete an upload's row (its parts' rows cascade) and then its files."""
    session.execute(delete(Upload).where(Upload.id == upload_id).execution_options(synchronize_session=False))
    session.commit()
    remove_tree(storage.upload_dir(upload_id))


def remove_upload_files(storage: Storage, upload_id: str) -> None:
    """Remove an upload's folder (its row is gone already: completed)."""
    remove_tree(storage.upload_dir(upload_id))


def missing_parts(upload: Upload) -> list[int]:
    received = {p.number for p in upload.parts}
    return [n for n in range(1, upload.parts_total + 1) if n not in received]


class PartsReader(io.RawIOBase):
    """The parts of an upload read in order as one seekable file (zipfile seeks to the central directory).
    Wrap it in ``io.BufferedReader``. A part shorter on disk than its row says raises ``OSError``."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int]) -> None:
        super().__init__()
        self._paths = list(paths)
        self._starts = [0]
        for s in sizes[:-1]:
            self._starts.append(self._starts[-1] + s)
        self._size = sum(sizes)
        self._pos = 0
        self._index = -1
        self._file: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]  # io passes only these
        if self._pos >= self._size or not len(buffer):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        if index != self._index:
            if self._file is not None:
                self._file.close()
            self._file = self._paths[index].open("rb")
            self._index = index
        assert self._file is not None
        end = self._starts[index + 1] if index + 1 < len(self._starts) else self._size
        self._file.seek(self._pos - self._starts[index])
        view = memoryview(buffer)[: min(len(buffer), end - self._pos)]
        n = self._file.readinto(view)
        if not n:
            raise OSError(f"part {index + 1} of the upload is shorter on disk than when it was received")
        self._pos += n
        return n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def open_parts(storage: Storage, upload: Upload) -> io.BufferedReader:
    """The whole file of a fully received upload, as a buffered, seekable reader."""
    parts = sorted(upload.parts, key=lambda p: p.number)
    paths = [part_path(storage, upload.id, p.number) for p in parts]
    return io.BufferedReader(PartsReader(paths, [p.size_bytes for p in parts]), buffer_size=4 * MiB)


def sha256_of(reader: io.BufferedReader) -> str:
    """SHA-256 of a reader from its start (left at its start again)."""
    h = hashlib.sha256()
    reader.seek(0)
    while block := reader.read(4 * MiB):
        h.update(block)
    reader.seek(0)
    return h.hexdigest()


def reap_uploads(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Put uploads whose completion stopped beating (its process died) back to pending; delete uploads past
    ``expires_at`` (with their parts) and upload folders that have no row and are older than an hour. Returns
    the ids removed."""
    storage = Storage(settings)
    stale = affected_rows(
        session,
        update(Upload)
        .where(Upload.status == Upload.COMPLETING, Upload.updated_at < now - timedelta(seconds=COMPLETING_STALE_S))
        .values(status=Upload.PENDING, updated_at=now)
        .execution_options(synchronize_session=False),
    )
    if stale:
        log.warning("reaper: %d upload(s) whose completion stopped without an answer are pending again", stale)
    session.commit()
    expired = list(session.scalars(select(Upload.id).where(Upload.expires_at < now)))
    for upload_id in expired:
        delete_upload(session, storage, upload_id)
    known = set(session.scalars(select(Upload.id)))
    orphans: list[str] = []
    if storage.uploads.is_dir():
        for folder in storage.uploads.iterdir():
            try:
                old = now.timestamp() - folder.stat().st_mtime > ORPHAN_GRACE_S
            except FileNotFoundError:
                continue
            if folder.name not in known and old:
                remove_tree(folder)
                orphans.append(folder.name)
    if expired or orphans:
        log.info("reaper: removed %d expired upload(s) and %d orphaned upload folder(s)", len(expired), len(orphans))
    return expired + orphans
