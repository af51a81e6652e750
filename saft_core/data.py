"""Batches for torch: a ``torch.utils.data`` view of an ``ImageDataset`` and a seeded DataLoader whose errors
in worker processes read as they would in this one, and how many loader workers a run gets when it names none
(``auto_workers``). Listing and checking datasets is ``datasets.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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

    def __iter__(self):
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


# More loader workers than this rarely feed one GPU faster, and each costs a process's memory and shared memory.
MAX_AUTO_WORKERS = 8
# cgroup v2's CPU limit of this process's group ("max 100000", or "<quota> <period>" in microseconds): what
# ``docker --cpus`` and compose's ``cpus`` set, which the process's CPU affinity does not show.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# NVIDIA's driver lists every GPU of the machine here, whatever CUDA_VISIBLE_DEVICES hides from this process.
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its CPU affinity, lowered to its cgroup's CPU limit where one is set; >= 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2 file (or an unreadable one): no limit known
        pass
    return max(1, cpus)


def machine_gpus(listing: Path = NVIDIA_GPUS) -> int:
    """The GPUs of the machine: the driver's listing, else the CUDA devices this process sees; >= 1."""
    try:
        return max(1, sum(1 for _ in listing.iterdir()))
    except OSError:
        return max(1, torch.cuda.device_count())


def auto_workers(device: torch.device | str, *, cpus: int | None = None, gpus: int | None = None) -> int:
    """Data-loader workers for a run that names none (``DataConfig.workers`` None).

    On the CPU 0, as before there was a rule: workers would compete for the cores the model's own threads use.
    On CUDA ``min(MAX_AUTO_WORKERS, cpus // gpus)`` and at least 1: decoding in the job's
    process starves the GPU, and a job runs on one GPU, one worker per GPU (the service's layout), so each job
    gets its GPU's share of the cores. ``cpus`` defaults to ``available_cpus()``, ``gpus`` to ``machine_gpus()``
    (the machine's, not the visible ones: a worker started with CUDA_VISIBLE_DEVICES=1 still shares the cores)."""
    if torch.device(device).type != "cuda":
        return 0
    cpus = available_cpus() if cpus is None else cpus
    gpus = machine_gpus() if gpus is None else gpus
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, gpus)))


def resolve_workers(workers: int | None, device: torch.device | str) -> int:
    """``workers`` where one is named (0 included), else ``auto_workers(device)``."""
    return auto_workers(device) if workers is None else workers
