"""The fine-tuning loop, shared by SAFT (sparse) and full fine-tuning (the baseline).

SAFT's parametrisation (``SparseUpdate``): for every tensor P with selected flat indices ``idx`` the trainable
state is a dense fp32 vector ``delta`` of len(idx); the optimizer (AdamW) sees only these vectors, so its state
is 2 * k floats, never a dense copy of the model. After each backward pass the gradient of P is gathered at
``idx`` (masking happens before clipping) and P's other gradients are dropped; after the optimizer step
``P.view(-1)[idx] = base + delta`` is written. No other entry of P is ever written, so entries outside the
mask stay bitwise identical to the pre-trained values.

Where the gradient at the mask comes from (``grad_engine``): ``"sparse"`` (default) keeps every parameter frozen
and computes dL/d delta directly, only at the selected entries (``sparse_grad.SparseGradEngine``, entered
around the forward pass by ``forward_context``); ``"dense"`` is the reference: the selected tensors require
grad, autograd computes their dense gradients and ``after_backward`` gathers k values out of them. Both give the
same ``delta.grad``; the rest of the step (clipping, AdamW, the schedule, the weight writes) is shared.

``DenseUpdate`` trains every parameter in place (conventional fine-tuning) through the same loop.

The loop knows a method only through the ``Update`` protocol below (SAFT's ``SparseUpdate``, ``DenseUpdate``,
the benchmark's LoRA), so a new way of choosing what trains is a class, not an edit of ``train``. A method whose
run can be snapshotted and resumed also gives its trainable state (``ResumableUpdate``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .config import GradEngine, Precision, TrainConfig
from .masking import Mask
from .precision import autocast
from .results import Callbacks, Progress
from .snapshot import Resume, Snapshots, Stateful
from .sparse_grad import SparseGradEngine
from .zeroshot import Prompts, clip_logits


@runtime_checkable
class Update(Protocol):
    """What ``train`` asks of a method, in the order of one step."""

    def trainable(self) -> list[torch.Tensor]:
        """The tensors the optimizer steps (and whose gradients are clipped); the same list on every call."""
        ...

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Entered around each forward pass (e.g. the sparse gradient engine); a null context when not needed."""
        ...

    def after_backward(self) -> None:
        """Called after ``loss.backward()``, before clipping: leave the gradients of ``trainable()`` ready."""
        ...

    def after_step(self) -> None:
        """Called after the optimizer step: write what the trainable state means into the model's weights."""
        ...


@runtime_checkable
class ResumableUpdate(Update, Stateful, Protocol):
    """An ``Update`` whose trainable state can be saved in a snapshot and restored (``train`` with snapshots):
    ``state()`` and ``load_state(state)`` (``snapshot.Stateful``)."""


class SparseUpdate:
    """Trainable deltas at the masked entries only (see module docstring)."""

    def __init__(self, model: torch.nn.Module, mask: Mask, grad_engine: GradEngine = "sparse") -> None:
        self.params = dict(model.named_parameters())
        self.idx: dict[str, torch.Tensor] = {}
        self.base: dict[str, torch.Tensor] = {}
        self.delta: dict[str, torch.Tensor] = {}
        self.grad_engine = grad_engine
        for name, p in self.params.items():
            p.requires_grad_(grad_engine == "dense" and name in mask.indices)
        for name, idx in mask.indices.items():
            p = self.params[name]
            idx = idx.to(p.device)
            self.idx[name] = idx
            self.base[name] = p.detach().reshape(-1)[idx].float().clone()
            self.delta[name] = torch.zeros(idx.numel(), device=p.device, dtype=torch.float32, requires_grad=True)
        self.engine = SparseGradEngine(self.params, self.idx, self.delta) if grad_engine == "sparse" else None

    def trainable(self) -> list[torch.Tensor]:
        return list(self.delta.values())

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Enter around the forward pass: the sparse engine routes gradients at the mask into delta.grad."""
        return self.engine if self.engine is not None else contextlib.nullcontext()

    def after_backward(self) -> None:
        """Dense engine: gather P.grad at the mask into delta.grad and drop P's dense gradient. Sparse engine:
        delta.grad is already there (zeros where the forward never reached the tensor, as with dense)."""
        for name, idx in self.idx.items():
            if self.engine is not None:
                if self.delta[name].grad is None:
                    self.delta[name].grad = torch.zeros_like(self.delta[name])
                continue
            p = self.params[name]
            g = p.grad
            self.delta[name].grad = (
                g.reshape(-1)[idx].float() if g is not None else torch.zeros_like(self.delta[name])
            )
            p.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        for name, idx in self.idx.items():
            p = self.params[name]
            p.view(-1)[idx] = (self.base[name] + self.delta[name]).to(p.dtype)

    @torch.no_grad()
    def set_weights(self, alpha: float) -> None:
        """Put the masked entries at ``base + alpha * delta``: 0 is the pre-trained model, 1 the fine-tuned one
        (bitwise the trained weights), and between the values the checkpoint gives when applied at ``alpha``."""
        for name, idx in self.idx.items():
            p = self.params[name]
            base = self.base[name]
            if alpha == 1.0:
                value = base + self.delta[name]  # what after_step wrote
            elif alpha == 0.0:
                value = base
            else:  # the checkpoint's delta is the fine-tuned weight minus base, as deltas() computes it
                delta = (base + self.delta[name]).to(p.dtype).float() - base
                value = base + (alpha * delta).to(p.dtype).float()
            p.view(-1)[idx] = value.to(p.dtype)

    def state(self) -> dict[str, torch.Tensor]:
        """The trainable state for a snapshot: {name: delta} (fp32, on the CPU)."""
        return {name: d.detach().cpu().clone() for name, d in self.delta.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()`` and write the weights it gives."""
        for name, d in self.delta.items():
            d.copy_(state[name].to(d.device))
        self.after_step()

    @torch.no_grad()
    def deltas(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """{name: (idx, fine-tuned minus pre-trained at idx)} in fp32, on the CPU."""
        out: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name, idx in self.idx.items():
            ft = self.params[name].detach().reshape(-1)[idx].float()
            out[name] = (idx.cpu(), (ft - self.base[name]).cpu())
        return out


class DenseUpdate:
    """Conventional fine-tuning: every parameter trains; keeps a copy of the base weights for the delta."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        for p in self.params.values():
            p.requires_grad_(True)
        self.base = {n: p.detach().clone() for n, p in self.params.items()}
        self.tuned: dict[str, torch.Tensor] | None = None

    def trainable(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        return None

    def after_step(self) -> None:
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight, for a snapshot (on the CPU)."""
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for n, p in self.params.items():
            p.copy_(state[n].to(p.device))

    @torch.no_grad()
    def set_weights(self, alpha: float) -> None:
        """Put every weight at ``base + alpha * (tuned - base)``, as the dense checkpoint applied at ``alpha``
        gives. Away from alpha 1 the fine-tuned weights are kept in a copy (one model's worth of memory, on
        the model's device) until alpha 1 puts them back bitwise and frees it."""
        if alpha == 1.0:
            if self.tuned is not None:
                for n, p in self.params.items():
                    p.copy_(self.tuned[n])
                self.tuned = None
            return
        if self.tuned is None:
            self.tuned = {n: p.detach().clone() for n, p in self.params.items()}
        for n, p in self.params.items():
            if alpha == 0.0:
                p.copy_(self.base[n])
            else:
                delta = self.tuned[n].float() - self.base[n].float()
                p.copy_(self.base[n] + (alpha * delta).to(p.dtype))

    @torch.no_grad()
    def deltas(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """{name: (None, dense fine-tuned minus pre-trained)}; None means every entry."""
        return {n: (None, (p.detach().float() - self.base[n].float()).cpu()) for n, p in self.params.items()}


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return factor


@dataclass
class TrainStats:
    steps: int
    first_loss: float
    last_loss: float
    mean_last_epoch_loss: float


def train(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prompts: Prompts,
    update: Update,
    cfg: TrainConfig,
    *,
    device: torch.device,
    callbacks: Callbacks | None = None,
    snapshots: Snapshots | None = None,
    precision: Precision = "auto",
) -> TrainStats:
    """Run ``cfg.epochs`` epochs of cross-entropy on zero-shot logits; the text tower stays in the graph.

    With ``snapshots``, the state is saved every ``snapshots.interval_s`` seconds and after the last step, and a
    saved state of the same configuration is resumed: the result is the uninterrupted run's (see snapshot.py);
    that needs a ``ResumableUpdate`` (a TypeError otherwise, before any step).
    """
    resumable = _resumable(update, snapshots)  # refused before anything else happens
    cb = callbacks or Callbacks()
    total = cfg.epochs * (len(loader) if isinstance(loader, Sized) else 0)
    torch.manual_seed(cfg.seed)  # augmentation randomness, if any
    opt = torch.optim.AdamW(update.trainable(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total))
    # 0) resume from a snapshot of this configuration, if there is one (all of it in snapshot.Resume)
    resume = Resume(snapshots, resumable, opt, sched, getattr(loader, "generator", None))
    pos = resume.start()
    if resume.resumed is not None:
        cb.on_message("info", f"resumed training from its snapshot at step {pos.step} of {total}")
        cb.on_progress(Progress("training", pos.step, total, loss=pos.last_loss, lr=opt.param_groups[0]["lr"]))
    model.train()
    for epoch in range(pos.epoch, cfg.epochs):
        for images, labels in resume.epoch(loader, epoch, pos):
            cb.check_cancel()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, precision), update.forward_context():
                logits = clip_logits(model, images, prompts.head(model))
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            # 1) mask the gradients (sparse) 2) clip 3) step on the trainable state 4) write weights
            update.after_backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(update.trainable(), cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            update.after_step()
            pos.stepped(float(loss.detach()))
            resume.step_done(pos, last_step=pos.step == total)  # 5) a snapshot, when one is due
            cb.on_progress(Progress("training", pos.step, total, loss=pos.last_loss, lr=lr))
    model.eval()
    losses = pos.epoch_losses
    return TrainStats(
        steps=pos.step, first_loss=pos.first_loss, last_loss=pos.last_loss,
        mean_last_epoch_loss=sum(losses) / len(losses) if losses else float("nan"),
    )


def _resumable(update: Update, snapshots: Snapshots | None) -> ResumableUpdate | None:
    """``update`` as a ``ResumableUpdate`` when the run takes snapshots (None when it does not)."""
    if snapshots is None:
        return None
    if not isinstance(update, ResumableUpdate):
        raise TypeError(f"{type(update).__name__} has no state()/load_state(), so its run cannot be snapshotted")
    return update
