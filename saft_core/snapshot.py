"""Snapshots of a run's training state, so that a run cut off (a killed worker, a crashed machine, a stopped
service) resumes where it was instead of starting again.

What a snapshot holds, and why it is enough for the same final checkpoint as an uninterrupted run:
- the trainable state: SAFT's per-tensor fp32 ``delta`` vectors (k floats), or every weight for full
  fine-tuning; the AdamW state (2 k floats for SAFT) and the scheduler's step;
- where the loop was: the epoch, the batches done in it, the global step, the losses seen so far;
- the random state at the *start* of that epoch (the DataLoader's shuffle generator and torch's global
  generator, which augmentations in the main process draw from) and at the snapshot. On resume the epoch's
  iterator is rebuilt from the epoch-start state and the batches already done are drawn again and skipped,
  so the shuffle order and every augmentation (in this process or in loader workers, whose seeds come from the
  same generator) are those of the uninterrupted run.
- a fingerprint of everything that decides the result (model, data, scoring, training): a snapshot of another
  configuration is ignored, never applied.

SAFT's mask is saved beside the snapshots once it is chosen (``mask.safetensors``), so a resumed run skips
scoring and masking and its deltas always refer to the same entries.

Files are written atomically (a temporary file, fsync, rename): a run killed while saving leaves the previous
snapshot intact. Snapshots are trusted local files of this run (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import FinetuneConfig

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
MASK_FILE = "mask.safetensors"
FORMAT_VERSION = 1


def fingerprint(cfg: FinetuneConfig, base_sha256: str = "") -> str:
    """A hash of what decides the result: the parts of ``cfg`` (not the device or where snapshots go) and the
    base weights themselves (``base_sha256``: a file replaced between two attempts is another model)."""
    parts = asdict(cfg)
    for key in ("device", "snapshot"):
        parts.pop(key, None)
    parts["base_sha256"] = base_sha256
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass
class TrainState:
    """The training loop's state at a step boundary (see the module docstring)."""

    step: int
    epoch: int
    batches_done: int  # batches of ``epoch`` already trained on
    first_loss: float
    epoch_losses: list[float]
    update: dict[str, torch.Tensor]  # the update's trainable state (deltas, or weights)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch_rng: dict[str, Any]  # random state at the start of ``epoch``
    rng: dict[str, Any]  # random state now
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state(loader_generator: torch.Generator | None) -> dict[str, Any]:
    """torch's global CPU (and CUDA) generator state and the loader's shuffle generator state."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Snapshots:
    """Where and how often one run's training state is saved.

    ``interval_s``: least seconds between two snapshots (the last step of training is always saved).
    A failure to write a snapshot is logged and the run goes on: a snapshot is an optimisation, not an output.
    """

    def __init__(self, directory: str | Path, fingerprint: str, interval_s: float) -> None:
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.interval_s = interval_s
        self._last = time.monotonic()
        self.saved = 0

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def mask_path(self) -> Path:
        return self.dir / MASK_FILE

    def due(self, *, last_step: bool) -> bool:
        return last_step or time.monotonic() - self._last >= self.interval_s

    def save(self, state: TrainState) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            payload = {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, **asdict(state)}
            _atomic_torch_save(payload, self.state_path)
            self.saved += 1
        except OSError as e:
            log.warning("could not write a training snapshot to %s: %s", self.dir, e)
        self._last = time.monotonic()

    def load(self) -> TrainState | None:
        """The saved state of this configuration, or None (none saved, another configuration, unreadable)."""
        if not self.state_path.is_file():
            return None
        try:
            payload = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: start again rather than fail the run
            log.warning("ignoring an unreadable training snapshot %s: %s", self.state_path, e)
            return None
        if payload.get("format_version") != FORMAT_VERSION or payload.get("fingerprint") != self.fingerprint:
            log.warning("ignoring a training snapshot of another configuration in %s", self.dir)
            return None
        payload.pop("format_version")
        payload.pop("fingerprint")
        return TrainState(**payload)
