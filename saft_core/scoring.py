"""SAFT's parameter scores: how strongly the downstream loss pulls on every entry at the pre-trained weights.

Default (the paper's): one pass over the training set in order, no augmentation; per batch the mean
cross-entropy of the zero-shot logits (text tower in the graph); score = sum over batches of |grad| per
entry, accumulated in fp32. Switches in ``SaftConfig`` give |sum grad| or sum grad^2 and restrict which
parameters are eligible (one tower; no embeddings, norms or biases).

Memory: one fp32 copy of the eligible parameters (the scores) besides the usual gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .config import Precision, SaftConfig
from .errors import SaftError
from .precision import autocast
from .results import Callbacks, Progress
from .zeroshot import Prompts, clip_logits

_EMBEDDING_HINTS = ("embedding", "conv1.", "patch_embed")


def _norm_param_names(model: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm | torch.nn.GroupNorm | torch.nn.BatchNorm2d):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False))
    return names


def tower_of(name: str) -> str:
    """'image' for the vision tower, 'text' for the text tower, 'shared' for logit_scale / logit_bias."""
    if name.startswith("visual."):
        return "image"
    if name.startswith("logit_"):
        return "shared"
    return "text"


def eligible_parameters(model: torch.nn.Module, cfg: SaftConfig) -> list[str]:
    """Names of the parameters SAFT may select, in ``model.named_parameters()`` order."""
    norms = _norm_param_names(model) if cfg.exclude_norms else set()
    out = []
    for name, _ in model.named_parameters():
        tower = tower_of(name)
        if cfg.towers != "all" and tower != cfg.towers:
            continue
        if cfg.exclude_embeddings and any(h in name for h in _EMBEDDING_HINTS):
            continue
        if name in norms:
            continue
        if cfg.exclude_biases and name.endswith("bias"):
            continue
        out.append(name)
    return out


def score_parameters(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prompts: Prompts,
    cfg: SaftConfig,
    *,
    device: torch.device,
    num_batches: int | None = None,
    callbacks: Callbacks | None = None,
    precision: Precision = "auto",
) -> dict[str, torch.Tensor]:
    """Return {parameter name: fp32 score tensor of the parameter's shape} for the eligible parameters.

    The model's weights are not changed; its ``requires_grad`` flags are restored on return.
    """
    cb = callbacks or Callbacks()
    params = dict(model.named_parameters())
    names = eligible_parameters(model, cfg)
    if not names:
        raise SaftError("no parameter is eligible for scoring with these filters", code="invalid_config")
    flags = {n: p.requires_grad for n, p in params.items()}
    chosen = set(names)
    for n, p in params.items():
        p.requires_grad_(n in chosen)
    scores = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    was_training = model.training
    model.eval()
    try:
        for step, (images, labels) in enumerate(batches, start=1):
            cb.check_cancel()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            model.zero_grad(set_to_none=True)
            with autocast(device, precision):
                logits = clip_logits(model, images, prompts.head(model))
            loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            # 1) accumulate per-entry gradient magnitude (or signed sum / square) in fp32
            for n in names:
                g = params[n].grad
                if g is None:
                    continue
                g = g.float()
                if cfg.score_reduction == "abs":
                    scores[n].add_(g.abs())
                elif cfg.score_reduction == "squared":
                    scores[n].addcmul_(g, g)
                else:
                    scores[n].add_(g)
            cb.on_progress(Progress("scoring", step, num_batches or step, loss=float(loss.detach())))
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    # 2) |sum grad| takes the magnitude only after summing
    if cfg.score_reduction == "abs_sum":
        for s in scores.values():
            s.abs_()
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise SaftError(
                f"scores of {n} are not finite: the loss diverged at the pre-trained weights",
                code="scoring_failed",
            )
    return scores
