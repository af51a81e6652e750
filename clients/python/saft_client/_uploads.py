"""Resumable multipart uploads: what the sync and the async client share. No HTTP here.

A dataset above the threshold goes through ``/v1/uploads``: the server names a part size, the client sends
the parts (several at once, each with its SHA-256 in ``X-Checksum-SHA256``) and then asks the server to
complete the upload into a dataset. What has been sent is remembered in a small JSON state file in the user's
cache, so calling ``datasets.upload`` again on the same source sends only the parts the server does not hold
with the right checksum.

A folder is sent as a zip built once into the cache, deterministically (sorted entries, fixed timestamps and
attributes), so that the bytes resumed are the bytes begun, and a part hashed in one session is the same part
in the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._transfer import _STORED, CHUNK, Progress, folder_files
from .errors import SaftClientError
from .models import Upload

DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PARALLEL = 4
ENV_CACHE_DIR = "SAFT_CACHE_DIR"
CHECKSUM_HEADER = "X-Checksum-SHA256"
# Zip timestamps are fixed (the format's earliest date) so that the archive's bytes depend on the contents only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_FILE_MODE = 0o644 << 16
_ZIP_UNIX = 3
STATE_VERSION = 1
# Refusals of complete that sending parts can repair (once): parts missing, or parts that differ from ours.
REPAIRABLE = frozenset({"upload_incomplete", "checksum_mismatch"})


def resolve_cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where upload state and folder archives live: ``override``, else ``$SAFT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/saft``, else ``~/.cache/saft``."""
    if override is not None:
        return Path(override)
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "saft"


# --- parts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Part ``number`` (from 1): ``size`` bytes of the file from ``offset``."""

    number: int
    offset: int
    size: int


def plan_parts(total: int, part_size: int) -> list[Part]:
    """The parts of a ``total``-byte file cut at ``part_size``: all full but the last, as the server expects."""
    if total < 1 or part_size < 1:
        raise SaftClientError(f"cannot cut {total} bytes into parts of {part_size}")
    return [
        Part(i + 1, offset, min(part_size, total - offset))
        for i, offset in enumerate(range(0, total, part_size))
    ]


def sha256_of(path: Path, offset: int = 0, size: int | None = None, progress: Progress | None = None) -> str:
    """The SHA-256 (hex) of ``size`` bytes of ``path`` from ``offset`` (to the end when None), read in chunks;
    ``progress(bytes_read, bytes_total)`` as it goes."""
    digest = hashlib.sha256()
    total = path.stat().st_size - offset if size is None else size
    done = 0
    for chunk in read_range(path, offset, size):
        digest.update(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    return digest.hexdigest()


def read_range(path: Path, offset: int = 0, size: int | None = None) -> Iterator[bytes]:
    """``size`` bytes of ``path`` from ``offset`` (to the end when None), one chunk at a time. A file shorter
    than promised raises: a part must never be sent short."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                if left:
                    raise SaftClientError(f"{path} changed while it was being sent (shorter than expected)")
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def parts_to_send(parts: list[Part], upload: Upload, hashes: Mapping[int, str]) -> list[Part]:
    """The parts the server does not hold as we would send them: every part, minus those it lists with the
    SHA-256 we computed for that part (a listed part without a local hash, or with another one, is resent)."""
    held = {p.number: p.sha256 for p in upload.parts}
    return [p for p in parts if p.number not in held or held[p.number] != hashes.get(p.number)]


# --- a folder as a deterministic zip ----------------------------------------------------------------------


def folder_listing(root: Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of each file ``folder_files`` keeps, sorted by path."""
    rows = []
    for p in folder_files(root):
        st = p.stat()
        rows.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(rows)


def listing_digest(listing: list[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def write_deterministic_zip(root: Path, listing: list[tuple[str, int, int]], dest: Path) -> None:
    """Zip the files of ``listing`` (paths relative to ``root``) into ``dest``: entries in path order, fixed
    timestamps and attributes, already-compressed images stored, the rest deflated (zlib's default level). The
    same files give the same bytes. Streams each file in chunks (nothing whole in memory)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for rel, size, _ in listing:
            info = zipfile.ZipInfo(rel, date_time=_ZIP_EPOCH)
            stored = Path(rel).suffix.lower() in _STORED
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_FILE_MODE
            info.create_system = _ZIP_UNIX
            info.file_size = size  # lets zipfile choose ZIP64 up front for a member over 2 GiB
            with zf.open(info, "w") as out:
                for chunk in read_range(root / rel, 0, size):
                    out.write(chunk)


def folder_archive(root: Path, cache: Path, listing: list[tuple[str, int, int]] | None = None) -> Path:
    """The deterministic zip of folder ``root`` in ``cache``/archives, built once per file list (names, sizes
    and mtimes): a call with the folder unchanged finds it there. Written beside its place and renamed in, so
    a half-built archive is never taken for one."""
    listing = folder_listing(root) if listing is None else listing
    if not listing:
        raise SaftClientError(f"{root}: the folder is empty")
    dest = cache / "archives" / f"{listing_digest(listing)[:32]}.zip"
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}.", suffix=".tmp")
        os.close(fd)
        try:
            write_deterministic_zip(root, listing, Path(tmp))
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as e:  # a full disk or an unreadable file: say which, as the client's error
        raise SaftClientError(f"cannot zip {root} into {dest.parent}: {e}") from e
    return dest


# --- what is uploaded, and what has been sent of it -------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What ``datasets.upload`` was given (``path``: a folder or an archive) and what it sends (``file``: the
    archive itself, or the folder's zip in the cache). ``fingerprint`` changes when the source does: size and
    mtime of an archive; the file list (names, sizes, mtimes) of a folder."""

    path: Path
    file: Path
    filename: str
    size: int
    fingerprint: str
    is_folder: bool


def source_bytes(path: Path, is_folder: bool) -> int:
    """The size of what would be sent: an archive's, or for a folder the sum of its files' (its zip's, about)."""
    return sum(p.stat().st_size for p in folder_files(path)) if is_folder else path.stat().st_size


def archive_source(path: Path) -> Source:
    st = path.stat()
    return Source(path.resolve(), path, path.name, st.st_size, f"{st.st_size}:{st.st_mtime_ns}", False)


def folder_source(path: Path, filename: str, cache: Path) -> Source:
    listing = folder_listing(path)
    archive = folder_archive(path, cache, listing)
    return Source(path.resolve(), archive, filename, archive.stat().st_size, listing_digest(listing), True)


def state_key(base_url: str, source: Source) -> str:
    """One state per service and source: the URL, the source's absolute path and its fingerprint."""
    material = json.dumps([base_url.rstrip("/"), str(source.path), source.fingerprint])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass
class UploadState:
    """What a later call needs to resume: the upload's id, the keys of its create and complete calls (so a
    retried create or complete after a crash is answered, not repeated) and the SHA-256 of each part this
    client has hashed (valid while ``part_size`` is the upload's)."""

    key: str
    base_url: str
    source: str
    file: str
    filename: str
    size: int
    sha256: str
    is_folder: bool
    create_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    upload_id: str | None = None
    part_size: int | None = None
    hashes: dict[int, str] = field(default_factory=dict)
    complete_key: str | None = None
    complete_name: str | None = None
    version: int = STATE_VERSION

    def attach(self, upload: Upload) -> None:
        """Follow ``upload`` (a new one, or the one resumed); part hashes of another part size are dropped."""
        if upload.part_size != self.part_size:
            self.hashes = {}
        self.upload_id = upload.id
        self.part_size = upload.part_size

    def matches(self, upload: Upload) -> bool:
        """Whether ``upload`` is one of this file (a state naming another's upload is not followed)."""
        return upload.bytes == self.size and upload.sha256 in (None, self.sha256)

    def unhashed(self, upload: Upload) -> list[Part]:
        """Parts the server holds that this state has no hash of (to be hashed before they are compared)."""
        assert self.part_size is not None
        parts = {p.number: p for p in plan_parts(self.size, self.part_size)}
        return [parts[p.number] for p in upload.parts if p.number in parts and p.number not in self.hashes]

    def forget_upload(self) -> None:
        """The server no longer has the upload (expired, unknown, or refused at complete): begin anew."""
        self.upload_id = None
        self.create_key = uuid.uuid4().hex
        self.complete_key = self.complete_name = None

    def complete_key_for(self, name: str, given: str | None) -> str:
        """The ``Idempotency-Key`` of the complete call for ``name``: the caller's, else one kept in the state
        (a later call repeating a complete whose answer was lost gets the same dataset back)."""
        if given:
            self.complete_key, self.complete_name = given, name
        elif self.complete_key is None or self.complete_name != name:
            self.complete_key, self.complete_name = uuid.uuid4().hex, name
        return self.complete_key

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> UploadState:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')}")
        data["hashes"] = {int(k): str(v) for k, v in data.get("hashes", {}).items()}
        return cls(**data)


class StateStore:
    """Upload state files in ``cache``/uploads, one per state key, written atomically. Thread-safe: parts sent
    in parallel record their hashes through ``record``."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.root = cache / "uploads"
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> UploadState | None:
        """The state under ``key``, or None when there is none or it cannot be read (then it is ignored: the
        upload begins anew, which is always correct)."""
        try:
            state = UploadState.from_json(self.path(key).read_text())
        except (OSError, ValueError, TypeError):
            return None
        return state if state.key == key else None

    def new(self, key: str, base_url: str, source: Source, progress: Progress | None = None) -> UploadState:
        state = UploadState(
            key=key,
            base_url=base_url,
            source=str(source.path),
            file=str(source.file),
            filename=source.filename,
            size=source.size,
            sha256=sha256_of(source.file, progress=progress),
            is_folder=source.is_folder,
        )
        self.save(state)
        return state

    def save(self, state: UploadState) -> None:
        with self._lock:
            self._write(state)

    def record(self, state: UploadState, number: int, sha256: str) -> None:
        with self._lock:
            state.hashes[number] = sha256
            self._write(state)

    def clear(self, state: UploadState, *, archive: bool = True) -> None:
        """Remove the state and (``archive``) a folder's archive in the cache (never a file of the user's)."""
        with self._lock:
            self.path(state.key).unlink(missing_ok=True)
            zipped = Path(state.file)
            if archive and state.is_folder and zipped.parent == self.cache / "archives":
                zipped.unlink(missing_ok=True)

    def _write(self, state: UploadState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{state.key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(state.to_json())
            os.replace(tmp, self.path(state.key))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


# --- progress across parallel parts ------------------------------------------------------------------------


class Tally:
    """Bytes of the file the server holds or is receiving, summed over parts sent in parallel and reported as
    ``progress(done, total)``. The first report is where the transfer starts (a resumed upload's parts the
    server already holds); a part sent again takes back what its failed attempt had counted."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._lock = threading.Lock()

    def start(self, done: int) -> None:
        with self._lock:
            self.done = done
            self._report()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._report()

    def _report(self) -> None:
        if self._progress:
            self._progress(self.done, self.total)


class PartBody:
    """The body of one part, made afresh for each attempt (``sync``/``aio`` as the request's body factory).
    It reports the bytes it reads to the tally, and a new attempt first takes back the previous attempt's.
    ``stop`` (set when the upload is abandoned) makes a part in flight fail at its next chunk."""

    def __init__(self, file: Path, part: Part, tally: Tally, stop: threading.Event) -> None:
        self.file = file
        self.part = part
        self.tally = tally
        self.stop = stop
        self.counted = 0

    def _chunks(self) -> Iterator[bytes]:
        self.tally.add(-self.counted)
        self.counted = 0
        for chunk in read_range(self.file, self.part.offset, self.part.size):
            if self.stop.is_set():
                raise UploadStopped("the upload was stopped")
            self.counted += len(chunk)
            self.tally.add(len(chunk))
            yield chunk

    def sync(self) -> dict[str, Any]:
        return {"content": self._chunks()}

    def aio(self) -> dict[str, Any]:
        async def chunks() -> Any:
            for chunk in self._chunks():  # blocking reads of one chunk each, as the rest of the client does
                yield chunk

        return {"content": chunks()}

    def headers(self, sha256: str) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(self.part.size),
            CHECKSUM_HEADER: sha256,
        }


class UploadStopped(SaftClientError):
    """A part was cut short because another part failed or the caller interrupted the upload."""
