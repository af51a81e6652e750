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
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from .config import FinetuneConfig

log = logging.getLogger(__name__)
B = TypeVar("B")

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


@runtime_checkable
class Stateful(Protocol):
    """A method's trainable state, as a snapshot saves and restores it (``training.ResumableUpdate``)."""

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable state, on the CPU."""
        ...

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()`` and write the weights it gives."""
        ...


@dataclass
class LoopPosition:
    """Where the training loop is and the losses it has seen: what a snapshot saves, a resumed run restores and
    ``train`` reports."""

    step: int = 0  # steps done in the whole run
    epoch: int = 0
    batches_done: int = 0  # batches of ``epoch`` trained on
    first_loss: float = math.nan
    last_loss: float = math.nan
    epoch_losses: list[float] = field(default_factory=list)  # the losses of ``epoch`` so far

    def stepped(self, loss: float) -> None:
        """One training step is done, with ``loss``."""
        self.step += 1
        self.batches_done += 1
        self.last_loss = loss
        if self.step == 1:
            self.first_loss = loss
        self.epoch_losses.append(loss)


class Resume:
    """All that ``train`` does to be resumable, in three calls around its loop:

    - ``start()`` before the first epoch: restores the saved state of this configuration, if there is one (the
      trainable state, the optimizer's and the scheduler's), and gives the ``LoopPosition`` to go on from;
    - ``epoch(loader, epoch, position)`` for each epoch: its batches still to train on. An epoch begins by noting
      the random state (the loader's shuffle generator, torch's global one); the epoch a resumed run stopped in
      is drawn again from its noted state, the batches trained on before the snapshot are skipped, and the random
      state at the snapshot is restored after the last of them, so every later draw is the uninterrupted run's;
    - ``step_done(position)`` after each step: saves a snapshot when one is due (the last step always is).

    Without ``snapshots`` (``trainable`` then None) nothing is restored or saved.
    """

    def __init__(
        self,
        snapshots: Snapshots | None,
        trainable: Stateful | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loader_generator: torch.Generator | None,
    ) -> None:
        self.snapshots = snapshots if trainable is not None else None
        self.trainable = trainable
        self.optimizer, self.scheduler = optimizer, scheduler
        self.generator = loader_generator
        self.resumed: TrainState | None = None  # the snapshot the run resumed from, once ``start`` found one
        self._epoch_rng: dict[str, Any] = {}  # the random state at the start of the running epoch

    def start(self) -> LoopPosition:
        """Restore the saved state, if any; the position the loop goes on from (step 0 without one)."""
        resumed = self.snapshots.load() if self.snapshots is not None else None
        if resumed is None or self.trainable is None:
            return LoopPosition()
        self.trainable.load_state(resumed.update)
        self.optimizer.load_state_dict(resumed.optimizer)
        self.scheduler.load_state_dict(resumed.scheduler)
        self.resumed = resumed
        losses = list(resumed.epoch_losses)
        return LoopPosition(
            step=resumed.step, epoch=resumed.epoch, batches_done=resumed.batches_done,
            first_loss=resumed.first_loss, last_loss=losses[-1] if losses else resumed.first_loss,
            epoch_losses=losses,
        )

    def epoch(self, loader: Iterable[B], epoch: int, position: LoopPosition) -> Iterator[B]:
        """The batches of ``epoch`` left to train on (see the class docstring); ``position`` moves to ``epoch``."""
        resumed = self.resumed if self.resumed is not None and self.resumed.epoch == epoch else None
        position.epoch = epoch
        if resumed is not None:
            set_rng_state(resumed.epoch_rng, self.generator)
            self._epoch_rng, skip = resumed.epoch_rng, resumed.batches_done
        else:
            self._epoch_rng, skip = rng_state(self.generator), 0
            position.batches_done, position.epoch_losses = 0, []
        for index, batch in enumerate(loader):
            if index < skip:  # done before the snapshot: drawn again (same randomness), not trained on
                if resumed is not None and index == skip - 1:
                    set_rng_state(resumed.rng, None)
                continue
            yield batch

    def step_done(self, position: LoopPosition, *, last_step: bool) -> None:
        """After a step: save the loop's state if a snapshot is due."""
        if self.snapshots is None or self.trainable is None or not self.snapshots.due(last_step=last_step):
            return
        self.snapshots.save(TrainState(
            step=position.step, epoch=position.epoch, batches_done=position.batches_done,
            first_loss=position.first_loss, epoch_losses=list(position.epoch_losses),
            update=self.trainable.state(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), epoch_rng=self._epoch_rng, rng=rng_state(None),
        ))
