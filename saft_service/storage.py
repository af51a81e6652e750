"""The artifact store: a directory (shared storage in a cluster) holding datasets and job outputs.

    <data_dir>/datasets/<dataset id>/<class>/<image>   extracted, verified uploads
    <data_dir>/jobs/<job id>/checkpoint.safetensors    sparse delta (and mask.safetensors)
    <data_dir>/uploads/<upload id>/<n>.part            parts of a multipart upload in flight
    <data_dir>/staging/                               uploads being checked; moved into place or deleted

Rows store paths relative to the data dir, except a dataset registered in place (``Dataset.external``), whose
absolute path must stay under one of the operator's import roots (``SAFT_IMPORT_ROOTS``).
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from .tables import Dataset


class Storage:
    """Paths of the artifact store under ``settings.data_dir``."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.resolved_data_dir
        self._settings = settings

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets / dataset_id

    def upload_dir(self, upload_id: str) -> Path:
        return self.uploads / upload_id

    def dataset_files(self, dataset: Dataset) -> Path:
        """Where a dataset's images are: under the data dir, or (external) where the operator keeps them, which
        must still be under an import root (a root the operator removed makes its datasets unreadable)."""
        if not dataset.external:
            return self.absolute(dataset.path)
        path = Path(dataset.path).resolve()
        if not any(path.is_relative_to(root) for root in self._settings.resolved_import_roots):
            raise ValueError(f"dataset {dataset.id} is outside the import roots (SAFT_IMPORT_ROOTS) now")
        return path

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"stored path {relative!r} leaves the data dir")
        return path

    def free_bytes(self) -> int:
        """Free space of the file system holding the data dir, in bytes (for non-root users)."""
        return shutil.disk_usage(self.root).free

    def ensure(self) -> None:
        for d in (self.datasets, self.staging, self.uploads, self.root / "jobs"):
            d.mkdir(parents=True, exist_ok=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_tree(path: Path) -> None:
    """Delete a directory if it exists (errors ignored: a leftover is logged by callers, not fatal)."""
    shutil.rmtree(path, ignore_errors=True)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Messages of libraries that report a full disk without an OSError (safetensors' Rust writer, torch).
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "StorageFull")


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the file system is full or over quota."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(m in str(e) for m in _FULL_MESSAGES):
            return True
        e = e.__cause__ or e.__context__
    return False


# An absolute POSIX path: a slash not preceded by a word character, then path characters.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"`,;:()<>]+")


def redact_paths(text: str, named: dict[Path | str, str] | None = None, *, max_chars: int = 1000) -> str:
    """``text`` fit to show a client: each path in ``named`` becomes its label, any other absolute path
    ``<path>``; control characters are dropped and the text is cut at ``max_chars``."""
    for path, label in sorted((named or {}).items(), key=lambda kv: -len(str(kv[0]))):
        text = text.replace(str(path), label)
    text = _ABSOLUTE_PATH.sub("<path>", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def client_message(message: str, settings: Settings) -> str:
    """``message`` with paths under the data dir or the models folder made relative (a dataset's file reads
    ``<dataset id>/<class>/<file>``) and any other absolute path replaced by ``<path>``."""
    storage = Storage(settings)
    named: dict[Path | str, str] = {f"{storage.datasets}/": "", f"{storage.root}/": ""}
    if settings.models_dir is not None:
        named[f"{settings.models_dir.expanduser().resolve()}/"] = ""
    return redact_paths(message, named)
