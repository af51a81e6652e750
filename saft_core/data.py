"""Batches for torch: a ``torch.utils.data`` view of an ``ImageDataset`` and a seeded DataLoader whose errors
in worker processes read as they would in this one. Listing and checking datasets is ``datasets.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from .datasets import ImageDataset
from .errors import DataError, SaftError
from .images import ImageDecodeError, decode_image


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
            image = decode_image(path)
        except ImageDecodeError as e:
            raise DataError(f"cannot read image {path}: {e.message}") from e
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
