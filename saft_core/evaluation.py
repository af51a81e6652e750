"""Top-1 / top-5 accuracy of a CLIP model on a labelled dataset, with a zero-shot head over its own classes.

A dataset is always scored over its own classes: an eval set whose classes are a subset of the training
classes (as ImageNet-A/-R use 200 of ImageNet's 1000) gets a head of just those classes; classes the model
never trained on (base-to-new) are scored zero-shot the same way.

``evaluate_along_alpha`` scores a fine-tuned model at several points between its base weights and its
fine-tuned ones (the robustness frontier, see frontier.py): the weights are switched by a callable of the
caller's, so this module never needs to know how a method stores its update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from .data import make_loader
from .datasets import ImageDataset
from .models import LoadedModel
from .results import Callbacks, EvalScore, Progress, Variant, variant_at
from .zeroshot import build_head, clip_logits


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    head: torch.Tensor,
    *,
    device: torch.device,
    callbacks: Callbacks | None = None,
) -> tuple[float, float, int]:
    """(top-1, top-min(5, C), n) in [0, 1] for the images of ``loader`` against ``head`` [D, C]."""
    cb = callbacks or Callbacks()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    k = min(5, head.shape[1])
    correct1 = correct5 = n = 0
    for step, (images, labels) in enumerate(loader, start=1):
        cb.check_cancel()
        images, labels = images.to(device), labels.to(device)
        with autocast:
            logits = clip_logits(model, images, head).float()
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        n += labels.numel()
        cb.on_progress(Progress("evaluating", step, len(loader)))
    return (correct1 / n if n else 0.0), (correct5 / n if n else 0.0), n


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
        top1, top5, n = accuracy(model, loader, head, device=loaded.device, callbacks=callbacks)
    finally:
        model.train(was_training)
    return EvalScore(dataset=name, model=variant, alpha=alpha, top1=top1, top5=top5, n=n,
                     num_classes=len(dataset.classes))


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
) -> list[EvalScore]:
    """Every set of ``sets`` ({name, dataset} pairs) scored at every alpha of ``alphas``, in that order.

    ``set_alpha(alpha)`` must put ``loaded.model``'s weights at ``base + alpha * delta``; the caller restores
    the weights it wants afterwards. Progress counts the batches of all passes as one stage, so a bar runs
    once from 0 to the total instead of restarting for every set and alpha.
    """
    if not sets:  # nothing to score: leave the weights alone (a dense switch copies the whole model)
        return []
    cb = callbacks or Callbacks()
    batches = [math.ceil(len(ds) / batch_size) for _, ds in sets]
    total = len(alphas) * sum(batches)
    done = 0
    scores: list[EvalScore] = []
    for alpha in alphas:
        set_alpha(alpha)
        for (name, ds), count in zip(sets, batches, strict=True):
            offset = done
            passes = dataclasses.replace(
                cb, on_progress=lambda p, offset=offset: cb.on_progress(Progress(p.stage, offset + p.step, total))
            )
            scores.append(evaluate_dataset(
                loaded, ds, name=name, variant=variant_at(alpha), alpha=alpha, templates=templates,
                batch_size=batch_size, callbacks=passes, workers=workers,
            ))
            done += count
    return scores
