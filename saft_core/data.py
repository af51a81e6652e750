"""Labelled image datasets: ImageFolder directories and CSV manifests, k-shot sampling, validation splits.

An ImageFolder is a directory with one sub-directory per class; classes are sorted by folder name and files
by name, so the order (and with it SAFT's scores) is reproducible. An optional ``classes.json`` maps folder
names to natural-language class names used in prompts ("golden_retriever" -> "golden retriever").

A CSV manifest has rows ``path,label`` (an optional header ``path,label``); relative paths are relative to the
CSV's directory; classes are the sorted distinct labels.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError, SaftError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CLASS_NAMES_FILE = "classes.json"


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


def check_image_size(im: Image.Image, max_pixels: int | None) -> None:
    """Refuse an opened (not yet decoded) image over ``max_pixels`` (width x height, read from its header)."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise DataError(
            f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels}", code="image_too_large"
        )


def verify_images(dataset: ImageDataset, max_pixels: int | None = None) -> None:
    """Decode every image once; raise DataError naming the files that are not readable images.

    An image over ``max_pixels`` is refused from its header, before it is decoded (code ``image_too_large``);
    so is one PIL itself calls a decompression bomb (where its warning is made an error, as the service does).
    """
    bad: list[str] = []
    for path, _ in dataset.samples:
        where = path.relative_to(dataset.root) if path.is_relative_to(dataset.root) else path
        try:
            with Image.open(path) as im:
                check_image_size(im, max_pixels)
                im.convert("RGB").load()
        except DataError as e:
            raise DataError(f"{where}: {e.message}", code=e.code) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{where}: {e}", code="image_too_large") from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append(f"{where} ({e})")
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


class TorchImageDataset(torch.utils.data.Dataset):
    """Applies an open_clip preprocessing transform; yields (image tensor [3, H, W], label)."""

    def __init__(self, dataset: ImageDataset, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.dataset.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        return self.transform(image), label


class _Loader(torch.utils.data.DataLoader):
    """A DataLoader whose failures in worker processes read like the same failure in the main process.

    torch re-raises an exception from a worker with the worker's whole traceback as its message, and reports a
    worker killed by the system (often: too little shared memory, Docker's default is 64 MB) as a RuntimeError.
    """

    def __iter__(self):  # type: ignore[override]
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except SaftError as e:
                original = _worker_message(e.message)
                if original == e.message:  # raised in this process: as it is
                    raise
                raise type(e)(original, code=e.code) from None
            except RuntimeError as e:
                if "DataLoader worker" not in str(e):
                    raise
                raise DataError(
                    f"a data-loader worker process died ({e}); give the process more shared memory (Docker:"
                    " --shm-size or compose shm_size) or use fewer workers (0 runs in the main process)",
                    code="data_loader_failed",
                ) from e
            yield batch


def _worker_message(message: str) -> str:
    """The original message of an error torch re-raised from a worker ("Caught X in DataLoader worker ...")."""
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]  # "saft_core.errors.DataError: cannot read image ..."
    return last.split(": ", 1)[1] if ": " in last else last


def make_loader(
    dataset: ImageDataset,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffle order (and, with ``num_workers``, the workers' random augmentations) depends
    only on ``seed`` and ``num_workers``; errors in worker processes read as they would in this one."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return _Loader(
        TorchImageDataset(dataset, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
    )
