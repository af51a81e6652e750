"""Top-1 / top-5 accuracy of a CLIP model on a labelled dataset, with a zero-shot head over its own classes.

A dataset is always scored over its own classes: an eval set whose classes are a subset of the training
classes (as ImageNet-A/-R use 200 of ImageNet's 1000) gets a head of just those classes; classes the model
never trained on (base-to-new) are scored zero-shot the same way.

``evaluate_along_alpha`` scores a fine-tuned model at several points between its base weights and its
fine-tuned ones (the robustness frontier, see frontier.py): the weights are switched by a callable of the
caller's, so this module never needs to know how a method stores its update. Reading an image (decoding,
transforming, moving it to the device) costs far more than switching SAFT's k weights, so each image is read
once and scored at every alpha in turn (``count_hits_along_alpha``); where a switch costs more than reading a
batch (full fine-tuning's switch writes every weight, see ``read_once_pays``), every alpha reads the images
again instead. Either order gives the same scores, to the bit, as ``evaluate_dataset`` at each alpha.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol

import torch

from .config import Precision
from .data import make_loader
from .datasets import ImageDataset
from .models import LoadedModel
from .precision import autocast
from .results import Callbacks, EvalScore, Progress, Variant, variant_at
from .zeroshot import build_head, clip_logits

Batch = tuple[torch.Tensor, torch.Tensor]  # images [B, 3, H, W], labels [B]
# "batch": read each batch once and switch the weights to every alpha for it; "alpha": switch once per alpha and
# read every set again for each alpha; "auto": ``read_once_pays`` decides between the two.
Order = Literal["batch", "alpha", "auto"]
STAGE = "evaluating"


class Batches(Protocol):
    """Batches of one set: a DataLoader or a list of pre-read batches (``len`` is the number of batches)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


def _hits(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, head: torch.Tensor,
          precision: Precision = "auto") -> torch.Tensor:
    """(top-1 hits, top-min(5, C) hits) of one batch against ``head`` [D, C]: a long tensor [2] on the device,
    so that counting costs no synchronisation with it."""
    k = min(5, head.shape[1])
    # One autocast context per forward pass, never one around several alphas: autocast keeps its bf16 copies of
    # weights that require grad until its outermost context exits, and would score later alphas with them.
    with autocast(images.device, precision):
        logits = clip_logits(model, images, head).float()
    hits = logits.topk(k, dim=1).indices == labels[:, None]
    return torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum()))


def _to(batch: Batch, device: torch.device) -> Batch:
    """A batch on ``device``; asynchronous from pinned memory (the loaders pin on CUDA)."""
    images, labels = batch
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    loader: Batches,
    head: torch.Tensor,
    *,
    device: torch.device,
    callbacks: Callbacks | None = None,
    precision: Precision = "auto",
) -> tuple[float, float, int]:
    """(top-1, top-min(5, C), n) in [0, 1] for the images of ``loader`` against ``head`` [D, C]."""
    cb = callbacks or Callbacks()
    device = torch.device(device)
    correct = torch.zeros(2, dtype=torch.long, device=device)
    n = 0
    for step, batch in enumerate(loader, start=1):
        cb.check_cancel()
        images, labels = _to(batch, device)
        correct += _hits(model, images, labels, head, precision)
        n += labels.numel()
        cb.on_progress(Progress(STAGE, step, len(loader)))
    correct1, correct5 = correct.tolist()
    return _share(correct1, n), _share(correct5, n), n


def _share(hits: int, n: int) -> float:
    """``hits / n`` in [0, 1]; 0 for no images."""
    return hits / n if n else 0.0


def evaluate_dataset(
    loaded: LoadedModel,
    dataset: ImageDataset,
    *,
    name: str,
    variant: Variant,
    templates: Sequence[str],
    batch_size: int = 64,
    callbacks: Callbacks | None = None,
    workers: int = 0,
    alpha: float | None = None,
    precision: Precision = "auto",
) -> EvalScore:
    """Score ``loaded.model`` (in its current weights) on ``dataset`` over the dataset's own classes.

    ``alpha`` records where the current weights are between base (0) and fine-tuned (1); by default the end
    that ``variant`` names (an "interpolated" model needs it)."""
    if alpha is None:
        if variant == "interpolated":
            raise ValueError("an interpolated model's score needs its alpha")
        alpha = 0.0 if variant == "zero-shot" else 1.0
    model = loaded.model
    was_training = model.training
    model.eval()
    try:
        head = build_head(model, loaded.tokenizer, dataset.class_names, templates, loaded.device)
        loader = make_loader(dataset, loaded.preprocess_eval, batch_size, num_workers=workers,
                             pin_memory=torch.device(loaded.device).type == "cuda")
        top1, top5, n = accuracy(model, loader, head, device=loaded.device, callbacks=callbacks,
                                 precision=precision)
    finally:
        model.train(was_training)
    return EvalScore(dataset=name, model=variant, alpha=alpha, top1=top1, top5=top5, n=n,
                     num_classes=len(dataset.classes))


def read_once_pays(switch_s: float, read_s: float) -> bool:
    """Whether to read each batch once and switch the weights to every alpha for it (order "batch").

    Per batch, that order makes A - 1 switches (``count_hits_along_alpha`` visits the alphas back and forth, so a
    batch starts at the alpha the last one ended at) where order "alpha" makes next to none, and order "alpha"
    reads the batch A - 1 times more: reading once pays when one switch (``switch_s``, seconds) costs no more
    than reading one batch (``read_s``, seconds). Memory decides nothing: a switch holds the same copies in
    either order (full fine-tuning's copy of its tuned weights while away from alpha 1)."""
    return switch_s <= read_s


@torch.no_grad()
def heads_along_alpha(
    loaded: LoadedModel,
    class_names: Sequence[Sequence[str]],
    alphas: Sequence[float],
    set_alpha: Callable[[float], None],
    templates: Sequence[str],
) -> tuple[list[list[torch.Tensor]], float]:
    """``heads[j][i]``, the zero-shot head [D, C_i] of class list i at ``alphas[j]`` (the text tower may be
    fine-tuned too, so each alpha has its own), and the mean seconds of one ``set_alpha`` call. Builds each head
    once, the model in its current mode; leaves the weights at ``alphas[-1]``."""
    device = torch.device(loaded.device)
    heads: list[list[torch.Tensor]] = []
    switching = 0.0
    for alpha in alphas:
        _sync(device)
        start = time.perf_counter()
        set_alpha(alpha)
        _sync(device)
        switching += time.perf_counter() - start
        heads.append([build_head(loaded.model, loaded.tokenizer, names, templates, device) for names in class_names])
    return heads, switching / max(1, len(alphas))


@torch.no_grad()
def count_hits_along_alpha(
    model: torch.nn.Module,
    sets: Sequence[Batches],
    heads: Sequence[Sequence[torch.Tensor]],
    alphas: Sequence[float],
    set_alpha: Callable[[float], None],
    *,
    device: torch.device,
    order: Literal["batch", "alpha"] = "batch",
    callbacks: Callbacks | None = None,
    precision: Precision = "auto",
) -> tuple[torch.Tensor, list[int]]:
    """Hits of every set of batches at every alpha: ``counts`` [A, S, 2] (long, on the CPU: top-1 and
    top-min(5, C) hits of set i at ``alphas[j]`` against ``heads[j][i]``) and the number of images per set.

    Order "batch" reads each batch once (moved to ``device`` once) and scores it at every alpha, visiting the
    alphas forwards and backwards on alternate batches; order "alpha" switches once per alpha and reads every set
    again for it (each set must be iterable again: a DataLoader or a list). Either way the weights end at
    ``alphas[-1]``, progress counts one step per batch and alpha (one bar from 1 to A x batches), and
    cancellation is polled before every batch. With pre-read lists of batches this measures the stage without
    reading images: the floor the compute and the switches set."""
    cb = callbacks or Callbacks()
    device = torch.device(device)
    counts = torch.zeros(len(alphas), len(sets), 2, dtype=torch.long, device=device)
    n = [0] * len(sets)
    total = len(alphas) * sum(len(s) for s in sets)
    step = 0
    current: float | None = None

    def score(j: int, i: int, images: torch.Tensor, labels: torch.Tensor) -> None:
        nonlocal current, step
        if alphas[j] != current:
            set_alpha(alphas[j])
            current = alphas[j]
        counts[j, i] += _hits(model, images, labels, heads[j][i], precision)
        step += 1
        cb.on_progress(Progress(STAGE, step, total))

    if order == "batch":
        visits = list(range(len(alphas)))
        for i, batches in enumerate(sets):
            for batch in batches:
                cb.check_cancel()
                images, labels = _to(batch, device)
                n[i] += labels.numel()
                for j in visits:
                    score(j, i, images, labels)
                visits.reverse()  # the next batch starts at the alpha this one ended at: one switch fewer
    else:
        for j in range(len(alphas)):
            for i, batches in enumerate(sets):
                for batch in batches:
                    cb.check_cancel()
                    images, labels = _to(batch, device)
                    if j == 0:
                        n[i] += labels.numel()
                    score(j, i, images, labels)
    if current != alphas[-1]:
        set_alpha(alphas[-1])
    return counts.cpu(), n


class _ReadAhead:
    """A loader whose first batch is read when this is made, timed (``read_s``, seconds): the first iteration
    starts with that batch, later ones read the loader again. With loader workers the time includes starting
    them, as every pass of order "alpha" starts them again."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader
        start = time.perf_counter()
        self._rest: Iterator[Batch] | None = iter(loader)
        self._first = next(self._rest, None)
        self.read_s = time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        rest, first, self._rest, self._first = self._rest, self._first, None, None
        if rest is None:
            yield from self.loader
            return
        if first is not None:
            yield first
        yield from rest


def evaluate_along_alpha(
    loaded: LoadedModel,
    sets: Sequence[tuple[str, ImageDataset]],
    alphas: Sequence[float],
    set_alpha: Callable[[float], None],
    *,
    templates: Sequence[str],
    batch_size: int = 64,
    callbacks: Callbacks | None = None,
    workers: int = 0,
    order: Order = "auto",
    precision: Precision = "auto",
) -> list[EvalScore]:
    """Every set of ``sets`` ({name, dataset} pairs) scored at every alpha of ``alphas``, alpha-major (every set
    at ``alphas[0]``, then at ``alphas[1]``, ...); each score equals ``evaluate_dataset``'s at that alpha.

    ``set_alpha(alpha)`` must put ``loaded.model``'s weights at ``base + alpha * delta`` from any alpha. The
    heads are built first, once per set and alpha; then ``order`` (see ``Order``) decides how the images are
    read. "auto" times one switch (while building the heads) and the read of the first batch and takes order
    "batch" when ``read_once_pays``, else order "alpha", which it reports through ``callbacks.on_message``.
    Afterwards the weights are at ``alphas[-1]`` (untouched when there is nothing to score); the caller
    restores the weights it wants. Progress counts one step per batch and alpha as one bar for the stage.
    """
    if not sets or not alphas:  # nothing to score: leave the weights alone (a dense switch copies the whole model)
        return []
    cb = callbacks or Callbacks()
    model, device = loaded.model, torch.device(loaded.device)
    was_training = model.training
    model.eval()
    try:
        heads, switch_s = heads_along_alpha(loaded, [ds.class_names for _, ds in sets], alphas, set_alpha, templates)
        loaders: list = [
            make_loader(ds, loaded.preprocess_eval, batch_size, num_workers=workers, pin_memory=device.type == "cuda")
            for _, ds in sets
        ]
        if order == "auto" and len(alphas) > 1:
            first = _ReadAhead(loaders[0])
            loaders[0] = first
            order = "batch" if read_once_pays(switch_s, first.read_s) else "alpha"
            if order == "alpha":
                cb.on_message("info", (
                    f"evaluating: switching the weights between alphas ({switch_s * 1e3:.1f} ms) costs more than "
                    f"reading a batch of images ({first.read_s * 1e3:.1f} ms), so every eval set is read once per "
                    f"alpha ({len(alphas)} times) instead of once"
                ))
        counts, n = count_hits_along_alpha(model, loaders, heads, alphas, set_alpha, device=device,
                                           order="alpha" if order == "alpha" else "batch", callbacks=cb,
                                           precision=precision)
    finally:
        model.train(was_training)
    hits = counts.tolist()
    return [
        EvalScore(dataset=name, model=variant_at(alpha), alpha=alpha, top1=_share(hits[j][i][0], n[i]),
                  top5=_share(hits[j][i][1], n[i]), n=n[i], num_classes=len(ds.classes))
        for j, alpha in enumerate(alphas) for i, (name, ds) in enumerate(sets)
    ]
