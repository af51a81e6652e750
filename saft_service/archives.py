"""Checking and extracting uploaded dataset archives (.zip, .tar, .tar.gz) in ImageFolder layout.

An archive is refused, with a message that says which entry is wrong, when an entry
- escapes the folder (absolute path, ``..``) or is a link, device or other special file,
- is not ``<class>/<image>`` or a top-level ``classes.json`` (one wrapping folder is allowed and stripped),
- has a suffix outside ``saft_core.images.IMAGE_EXTENSIONS``, or repeats a name,
or when the archive holds more than ``max_members`` entries or more than ``max_bytes`` once extracted (counted
while writing, so a lying header does not help). Junk from archivers (``__MACOSX/``, ``.DS_Store``, dot files)
is skipped. Extraction writes only into a fresh staging directory, which callers delete on failure; decoding
every image is left to ``saft_core.datasets.load_dataset(verify=True)``.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Generic, TypeVar

from saft_core.datasets import CLASS_NAMES_FILE
from saft_core.images import IMAGE_EXTENSIONS

from .input_checks import LimitError, check_name, loads_bounded
from .settings import Settings
from .storage import is_storage_full

_JUNK_DIRS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class UploadError(Exception):
    """An upload is refused. ``status`` is the HTTP status, ``code`` a stable identifier."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Limits:
    """What one upload may hold (``Limits.of(settings)``); bytes, counts and characters."""

    max_members: int
    max_bytes: int
    max_classes: int
    max_classes_json_bytes: int
    max_class_name_chars: int
    max_json_depth: int
    quota_bytes: int | None = None  # what the tenant may still store (SAFT_TENANT_STORAGE_BYTES); None: no quota

    @classmethod
    def of(cls, settings: Settings, *, max_bytes: int | None = None, quota_bytes: int | None = None) -> Limits:
        return cls(
            max_members=settings.max_archive_members,
            max_bytes=max_bytes if max_bytes is not None else settings.max_extracted_bytes,
            max_classes=settings.max_classes,
            max_classes_json_bytes=settings.max_classes_json_bytes,
            max_class_name_chars=settings.max_class_name_chars,
            max_json_depth=settings.max_json_depth,
            quota_bytes=quota_bytes,
        )

    @property
    def budget(self) -> int:
        """Most bytes an extraction may write: the size limit, or the quota left when that is smaller."""
        return self.max_bytes if self.quota_bytes is None else min(self.max_bytes, self.quota_bytes)

    def over_budget(self, what: str) -> UploadError:
        """The refusal of an extraction that goes past ``budget``: the quota's when that is what binds."""
        if self.quota_bytes is not None and self.quota_bytes < self.max_bytes:
            return UploadError(
                "storage_quota_exceeded",
                f"{what} needs more than the {self.quota_bytes:,} bytes this tenant may still store "
                "(SAFT_TENANT_STORAGE_BYTES)",
                status=413,
            )
        return UploadError("archive_too_large", f"{what} is over the limit of {self.max_bytes} bytes", status=413)


_Ref = TypeVar("_Ref", zipfile.ZipInfo, tarfile.TarInfo)


@dataclass(frozen=True)
class _Entry(Generic[_Ref]):
    """One archive entry to extract: its parts after normalisation and where to read it."""

    parts: tuple[str, ...]
    size: int
    ref: _Ref


# Compressed tars other than gzip are refused whatever their size: their decoders cost far more (bzip2's CPU,
# xz's memory, up to the dictionary size the file itself declares) for images that barely compress anyway.
_REFUSED_COMPRESSIONS = {b"BZh": "bzip2 (.tar.bz2)", b"\xfd7zXZ\x00": "xz (.tar.xz)"}
UNSUPPORTED = "the file is not a .zip, .tar or .tar.gz archive"


def _archive_kind(f: BinaryIO) -> str:
    """``zip``, ``tar`` or ``tar.gz`` from the file's first bytes; anything else is 415 ``unsupported_archive``."""
    f.seek(0)
    head = f.read(512)
    f.seek(0)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"  # tarfile checks it holds a tar
    for magic, what in _REFUSED_COMPRESSIONS.items():
        if head.startswith(magic):
            raise UploadError(
                "unsupported_archive", f"{what} compressed archives are not accepted; send a .zip, .tar or .tar.gz",
                status=415,
            )
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) == 512 and tarfile.is_tarfile(f):  # old-style tar without the ustar magic
        f.seek(0)
        return "tar"
    f.seek(0)
    raise UploadError("unsupported_archive", UNSUPPORTED, status=415)


def _normalise(name: str) -> tuple[str, ...] | None:
    """The safe parts of an entry name, or None for archiver junk. Raises for names that escape the folder."""
    if "\x00" in name:
        raise UploadError("unsafe_archive", f"entry {name!r} has a NUL byte in its name")
    if "\\" in name:
        raise UploadError("unsafe_archive", f"entry {name!r} uses backslashes; archive with '/' separators")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise UploadError("unsafe_archive", f"entry {name!r} has an absolute path")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        raise UploadError("unsafe_archive", f"entry {name!r} escapes the archive folder ('..')")
    if any(p in _JUNK_DIRS for p in parts) or (
        parts and (parts[-1] in _JUNK_FILES or parts[-1].startswith("."))
    ):
        return None
    if any(len(p.encode()) > 255 for p in parts):
        raise UploadError("invalid_dataset", f"entry {name!r} has a name longer than 255 bytes")
    return parts


def _zip_entries(zf: zipfile.ZipFile, limits: Limits) -> Iterator[tuple[str, bool, int, zipfile.ZipInfo]]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UploadError(
            "too_many_files",
            f"the archive has {len(infos)} entries; the limit is {limits.max_members}",
            status=413,
        )
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UploadError(
                "unsafe_archive", f"entry {info.filename!r} is a symbolic link; links are not accepted"
            )
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: archivers that record no type
            raise UploadError("unsafe_archive", f"entry {info.filename!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise UploadError("unsupported_archive", f"entry {info.filename!r} is encrypted", status=415)
        yield info.filename, info.is_dir(), info.file_size, info


def _tar_entries(tf: tarfile.TarFile, limits: Limits) -> Iterator[tuple[str, bool, int, tarfile.TarInfo]]:
    for count, member in enumerate(tf, start=1):  # one pass through a .tar.gz; members are kept
        if count > limits.max_members:
            raise UploadError(
                "too_many_files", f"the archive has more than {limits.max_members} entries", status=413
            )
        if member.issym() or member.islnk():
            raise UploadError("unsafe_archive", f"entry {member.name!r} is a link; links are not accepted")
        if not (member.isfile() or member.isdir()):
            raise UploadError("unsafe_archive", f"entry {member.name!r} is not a regular file or folder")
        yield member.name, member.isdir(), member.size, member


def _plan(raw: Iterator[tuple[str, bool, int, _Ref]], limits: Limits) -> list[_Entry[_Ref]]:
    """Check every entry and decide where it goes. Nothing is written yet."""
    files: list[_Entry[_Ref]] = []
    declared = 0
    for name, is_dir, size, ref in raw:
        parts = _normalise(name)
        if parts is None or is_dir or not parts:
            continue
        declared += size
        if parts[-1:] == (CLASS_NAMES_FILE,) and size > limits.max_classes_json_bytes:
            raise _classes_file_too_large(limits)
        if declared > limits.budget:
            raise limits.over_budget("the extracted archive")
        files.append(_Entry(parts, size, ref))
    if not files:
        raise UploadError("invalid_dataset", "the archive holds no files; expected <class>/<image> entries")
    # One wrapping folder (zip of a folder: "pets/cat/1.jpg") is stripped.
    tops = {e.parts[0] for e in files}
    if len(tops) == 1 and all(len(e.parts) >= 3 for e in files if e.parts[1:] != (CLASS_NAMES_FILE,)):
        files = [_Entry(e.parts[1:], e.size, e.ref) for e in files]
    seen: set[tuple[str, ...]] = set()
    allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
    for e in files:
        where = "/".join(e.parts)
        if e.parts == (CLASS_NAMES_FILE,):
            pass
        elif len(e.parts) != 2:
            raise UploadError(
                "invalid_dataset",
                f"entry {where!r} is not in ImageFolder layout: put each image directly in its class folder "
                "(<class>/<image>) and nothing else at the top but an optional classes.json",
            )
        elif PurePosixPath(e.parts[1]).suffix.lower() not in IMAGE_EXTENSIONS:
            raise UploadError(
                "invalid_dataset", f"entry {where!r} is not an image file (accepted: {allowed})"
            )
        key = tuple(p.casefold() for p in e.parts)
        if key in seen:
            raise UploadError(
                "invalid_dataset",
                f"entry {where!r} appears twice in the archive (names compared ignoring case)",
            )
        seen.add(key)
    return files


def _copy_limited(src: IO[bytes], dst: Path, budget: int, where: str, limits: Limits) -> int:
    """Copy ``src`` to ``dst``; refuse once more than ``budget`` bytes were written. Returns bytes written."""
    written = 0
    with dst.open("xb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise limits.over_budget(f"extracting {where!r}")
            out.write(chunk)
    return written


def _classes_file_too_large(limits: Limits) -> UploadError:
    return UploadError(
        "classes_file_too_large",
        f"{CLASS_NAMES_FILE} is over the limit of {limits.max_classes_json_bytes} bytes "
        "(SAFT_MAX_CLASSES_JSON_BYTES)",
        status=413,
    )


def _check_names(name: str, what: str, limits: Limits) -> None:
    try:
        check_name(name, max_chars=limits.max_class_name_chars, what=what, code="class_name_too_long")
    except LimitError as e:
        raise UploadError(e.code, e.message, status=e.status) from e


def check_classes(root: Path, limits: Limits) -> None:
    """Bound what the dataset row will hold: the number of classes, each folder name, and ``classes.json``
    (size, JSON depth, an object of strings, each name bounded, no control characters)."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(folders) > limits.max_classes:
        raise UploadError(
            "too_many_classes",
            f"the archive has {len(folders)} classes; the limit is {limits.max_classes} (SAFT_MAX_CLASSES)",
            status=413,
        )
    for folder in folders:
        _check_names(folder, f"class folder {folder[:50]!r}", limits)
    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return
    if path.stat().st_size > limits.max_classes_json_bytes:  # the header's size may have lied
        raise _classes_file_too_large(limits)
    try:
        mapping = loads_bounded(path.read_bytes(), max_depth=limits.max_json_depth, what=CLASS_NAMES_FILE)
    except LimitError as e:
        raise UploadError(e.code, e.message, status=e.status) from e
    except (ValueError, UnicodeDecodeError) as e:
        raise UploadError("invalid_dataset", f"{CLASS_NAMES_FILE} is not valid JSON: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise UploadError(
            "invalid_dataset", f"{CLASS_NAMES_FILE} must be a JSON object mapping folder names to class names"
        )
    for key, value in mapping.items():
        _check_names(value, f"{CLASS_NAMES_FILE} name of {key[:50]!r}", limits)


def extract_archive(fileobj: BinaryIO, dest: Path, limits: Limits) -> int:
    """Check the archive in ``fileobj`` and extract it into ``dest`` (created; must not exist).

    Returns the bytes written. Raises ``UploadError``; ``dest`` may then hold a partial extraction, which the
    caller deletes.
    """
    kind = _archive_kind(fileobj)
    budget = limits.budget
    try:
        dest.mkdir(parents=True, exist_ok=False)
        if kind == "zip":
            with zipfile.ZipFile(fileobj) as zf:
                entries = _plan(_zip_entries(zf, limits), limits)
                for e in entries:
                    target = dest.joinpath(*e.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(e.ref) as src:
                        budget -= _copy_limited(src, target, budget, "/".join(e.parts), limits)
        else:
            with tarfile.open(fileobj=fileobj, mode="r:gz" if kind == "tar.gz" else "r:") as tf:
                planned = _plan(_tar_entries(tf, limits), limits)
                for entry in planned:
                    target = dest.joinpath(*entry.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    reader = tf.extractfile(entry.ref)
                    if reader is None:
                        raise UploadError(
                            "unsafe_archive", f"entry {'/'.join(entry.parts)!r} cannot be read as a file"
                        )
                    with reader:
                        budget -= _copy_limited(reader, target, budget, "/".join(entry.parts), limits)
    except OSError as e:
        if is_storage_full(e):
            raise UploadError(
                "storage_full", "the service's storage is full; try again later", status=507
            ) from e
        raise UploadError("corrupt_archive", f"the archive cannot be read: {e}") from e
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise UploadError("corrupt_archive", f"the archive is damaged or truncated: {e}") from e
    except (RuntimeError, zlib.error, NotImplementedError) as e:  # bad CRC, unsupported compression
        raise UploadError("corrupt_archive", f"the archive cannot be read: {e}") from e
    # Make sure every path is inside dest (defence in depth; names were checked above).
    root = dest.resolve()
    for p in dest.rglob("*"):
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            shutil.rmtree(dest, ignore_errors=True)
            raise UploadError("unsafe_archive", f"entry {p.name!r} escaped the archive folder")
    check_classes(dest, limits)
    return limits.budget - budget


def check_folder(root: Path, limits: Limits, *, allowed: list[Path]) -> int:
    """Check a dataset folder already on the server as an archive is checked: ImageFolder layout
    (``<class>/<image>`` and an optional top-level ``classes.json``; dot files and archiver junk are ignored),
    image suffixes, entry count, names, classes. A symbolic link is followed only to a target under one of
    ``allowed`` (the import roots). Returns the bytes of the files, which stay where they are."""
    allowed_suffixes = ", ".join(sorted(IMAGE_EXTENSIONS))
    count = size = 0

    def inside(p: Path) -> bool:
        target = p.resolve()
        return any(target.is_relative_to(a) for a in allowed)

    for top in sorted(root.iterdir()):
        if top.name.startswith(".") or top.name in _JUNK_DIRS or top.name in _JUNK_FILES:
            continue
        if top.is_symlink() and not inside(top):
            raise UploadError("path_not_allowed", f"{top.name!r} is a link that leaves the import roots")
        if top.is_file() and top.name == CLASS_NAMES_FILE:
            continue
        if not top.is_dir():
            raise UploadError(
                "invalid_dataset",
                f"{top.name!r} is not in ImageFolder layout: put each image directly in its class folder "
                "(<class>/<image>) and nothing else at the top but an optional classes.json",
            )
        for entry in sorted(top.iterdir()):
            if entry.name.startswith(".") or entry.name in _JUNK_FILES:
                continue
            where = f"{top.name}/{entry.name}"
            if entry.is_symlink() and not inside(entry):
                raise UploadError("path_not_allowed", f"{where!r} is a link that leaves the import roots")
            if not entry.is_file():
                raise UploadError(
                    "invalid_dataset", f"{where!r} is not an image file: class folders hold images only"
                )
            if entry.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UploadError("invalid_dataset", f"{where!r} is not an image file (accepted: {allowed_suffixes})")
            count += 1
            if count > limits.max_members:
                raise UploadError(
                    "too_many_files", f"the folder has more than {limits.max_members} images", status=413
                )
            size += entry.stat().st_size
    check_classes(root, limits)
    return size
