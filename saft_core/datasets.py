"""Labelled image datasets: ImageFolder directories and CSV manifests, k-shot sampling, validation splits.

No torch here (``data.py`` turns a dataset into batches): the API checks an upload with this module alone.

An ImageFolder is a directory with one sub-directory per class; classes are sorted by folder name and files
by name, so the order (and with it SAFT's scores) is reproducible. An optional ``classes.json`` maps folder
names to natural-language class names used in prompts ("golden_retriever" -> "golden retriever").

A CSV manifest has rows ``path,label`` (an optional header ``path,label``); relative paths are relative to the
CSV's directory; classes are the sorted distinct labels.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image

CLASS_NAMES_FILE = "classes.json"
_VERIFY_SLICE = 256  # images handed to the decoding threads at a time


@dataclass
class ImageDataset:
    """An ordered list of (image path, class index) with its classes.

    ``classes`` are the identifiers (folder names or CSV labels), ``class_names`` the words put in prompts.
    """

    root: Path
    classes: list[str]
    class_names: list[str]
    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for _, label in self.samples:
            out[self.classes[label]] += 1
        return out

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        return ImageDataset(self.root, self.classes, self.class_names, [self.samples[i] for i in indices])


def _read_class_names(root: Path, classes: list[str]) -> list[str]:
    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return [c.replace("_", " ") for c in classes]
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
        raise DataError(f"{path} must be a JSON object mapping folder names to non-empty class names")
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise DataError(f"{path} names classes that have no folder: {', '.join(unknown[:5])}")
    return [mapping.get(c, c.replace("_", " ")).strip() for c in classes]


def _scan_image_folder(root: Path) -> ImageDataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(
            p for p in (root / cls).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        samples.extend((p, label) for p in files)
    return ImageDataset(root, classes, _read_class_names(root, classes), samples)


def _scan_manifest(path: Path) -> ImageDataset:
    rows: list[tuple[Path, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(f"{path}, line {i + 1}: expected 'path,label', got {row!r}")
                p = Path(row[0].strip())
                rows.append((p if p.is_absolute() else path.parent / p, row[1].strip()))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from e
    classes = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(classes)}
    missing = [str(p) for p, _ in rows if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} file(s) in {path} do not exist, e.g. {missing[0]}")
    return ImageDataset(path.parent, classes, _read_class_names(path.parent, classes),
                        [(p, index[label]) for p, label in rows])


def verify_images(dataset: ImageDataset, max_pixels: int | None = None) -> None:
    """Decode every image once; raise DataError naming the files that are not readable images.

    An image over ``max_pixels`` is refused from its header, before it is decoded (code ``image_too_large``);
    so is one PIL itself calls a decompression bomb (where its warning is made an error, as the service does).
    """
    def check(path: Path) -> ImageDecodeError | None:
        try:
            decode_image(path, max_pixels=max_pixels)
        except ImageDecodeError as e:
            return e
        return None

    bad: list[str] = []
    paths = [p for p, _ in dataset.samples]
    # Threads: PIL decodes without the GIL, so a large dataset is checked on every core, in order, a slice at a
    # time (memory stays flat however many images there are).
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), _VERIFY_SLICE):
            chunk = paths[start : start + _VERIFY_SLICE]
            for path, error in zip(chunk, pool.map(check, chunk), strict=True):
                if error is None:
                    continue
                where = path.relative_to(dataset.root) if path.is_relative_to(dataset.root) else path
                if error.code == "image_too_large":
                    raise DataError(f"{where}: {error.message}", code=error.code) from None
                bad.append(f"{where} ({error.message})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} file(s) are not readable images: {'; '.join(bad[:3])}{more}")


def load_dataset(
    path: str | Path, *, verify: bool = True, min_classes: int = 2, max_pixels: int | None = None
) -> ImageDataset:
    """Load an ImageFolder directory or a CSV manifest. Raises DataError on anything a user must fix."""
    p = Path(path)
    if p.is_dir():
        ds = _scan_image_folder(p)
    elif p.is_file() and p.suffix.lower() == ".csv":
        ds = _scan_manifest(p)
    elif p.exists():
        raise DataError(f"{p} is neither a directory (ImageFolder) nor a .csv manifest")
    else:
        raise DataError(f"dataset {p} does not exist")
    if not ds.samples:
        raise DataError(
            f"no images found in {p}: expected one sub-folder per class holding "
            f"{'/'.join(sorted(IMAGE_EXTENSIONS))} files"
        )
    populated = [c for c, n in ds.counts().items() if n > 0]
    if len(populated) < min_classes:
        raise DataError(f"{p} has images of {len(populated)} class(es); at least {min_classes} are needed")
    if verify:
        verify_images(ds, max_pixels)
    return ds


def sample_shots(dataset: ImageDataset, shots: int, seed: int) -> ImageDataset:
    """Keep ``shots`` images per class, drawn with ``seed``; classes with fewer keep all. Order is preserved."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(dataset.samples):
        by_class.setdefault(label, []).append(i)
    keep: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label]
        keep.extend(idx if len(idx) <= shots else rng.sample(idx, shots))
    return dataset.subset(sorted(keep))


def split_validation(dataset: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Stratified split: from each class hold out round(fraction * n) images (at most n - 1).

    Returns (train, validation); both keep the original order. ``fraction == 0`` returns an empty validation.
    """
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(dataset.samples):
        by_class.setdefault(label, []).append(i)
    held: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        n_val = min(round(fraction * len(idx)), len(idx) - 1)
        held.update(rng.sample(idx, n_val) if n_val > 0 else [])
    train = [i for i in range(len(dataset)) if i not in held]
    return dataset.subset(train), dataset.subset(sorted(held))
