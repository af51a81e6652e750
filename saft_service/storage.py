"""The artifact store: a directory (shared storage in a cluster) holding datasets and job outputs.

    <data_dir>/datasets/<dataset id>/<class>/<image>   extracted, verified uploads
    <data_dir>/jobs/<job id>/checkpoint.safetensors    sparse delta (and mask.safetensors)
    <data_dir>/staging/                               uploads being checked; moved into place or deleted

Rows store paths relative to the data dir.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .settings import Settings


class Storage:
    """Paths of the artifact store under ``settings.data_dir``."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.resolved_data_dir

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"stored path {relative!r} leaves the data dir")
        return path

    def ensure(self) -> None:
        for d in (self.datasets, self.staging, self.root / "jobs"):
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
