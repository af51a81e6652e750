"""Top-1 / top-5 accuracy of a CLIP model on a labelled dataset, with a zero-shot head over its own classes.

A dataset is always scored over its own classes: an eval set whose classes are a subset of the training
classes (as ImageNet-A/-R use 200 of ImageNet's 1000) gets a head of just those classes; classes the model
never trained on (base-to-new) are scored zero-shot the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .data import ImageDataset, make_loader
from .models import LoadedModel
from .results import Callbacks, EvalScore, Progress
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
    variant: str,
    templates: Sequence[str],
    batch_size: int = 64,
    callbacks: Callbacks | None = None,
    workers: int = 0,
) -> EvalScore:
    """Score ``loaded.model`` (in its current weights) on ``dataset`` over the dataset's own classes."""
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
    return EvalScore(dataset=name, model=variant, top1=top1, top5=top5, n=n, num_classes=len(dataset.classes))
