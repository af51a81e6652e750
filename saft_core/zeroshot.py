"""Zero-shot heads: class names x prompt templates -> normalised text embeddings, and CLIP logits.

``build_head`` is open_clip's own ``build_zero_shot_classifier`` (no gradient), for inference.
``Prompts.head`` computes the same head with the text tower in the autograd graph, which SAFT's scoring and
training need: the text tower's parameters are scored and fine-tuned too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import open_clip
import torch

from .config import fill_template


def build_head(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str,
) -> torch.Tensor:
    """Zero-shot classifier weights, shape [embed_dim, num_classes], columns L2-normalised. No gradient.

    Templates reach open_clip as callables: given strings, it would run them through ``str.format``."""
    fillers = [_filler(t) for t in templates]
    return open_clip.build_zero_shot_classifier(
        model, tokenizer, list(class_names), fillers, num_classes_per_batch=64, device=device
    )


def _filler(template: str) -> Callable[[str], str]:
    return lambda class_name: fill_template(template, class_name)


@dataclass
class Prompts:
    """Tokenised prompts for every (class, template) pair, ordered class-major: tokens [C * T, context]."""

    tokens: torch.Tensor
    num_classes: int
    num_templates: int

    @classmethod
    def build(
        cls,
        tokenizer: Callable[..., torch.Tensor],
        class_names: Sequence[str],
        templates: Sequence[str],
        device: torch.device | str,
    ) -> Prompts:
        texts = [fill_template(t, c) for c in class_names for t in templates]
        return cls(tokenizer(texts).to(device), len(class_names), len(templates))

    def head(self, model: torch.nn.Module) -> torch.Tensor:
        """Same as ``build_head`` but differentiable: [embed_dim, C]."""
        clip: Any = model  # open_clip's model classes (untyped) define encode_text
        emb = clip.encode_text(self.tokens, normalize=True)
        emb = emb.reshape(self.num_classes, self.num_templates, -1).mean(dim=1)
        emb = emb / emb.norm(dim=1, keepdim=True)
        return emb.T


def clip_logits(model: torch.nn.Module, images: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """``logit_scale.exp() * normalize(image_features) @ head`` (+ logit_bias for SigLIP models): [B, C]."""
    clip: Any = model  # open_clip's model classes (untyped) define encode_image and logit_scale
    feats = clip.encode_image(images, normalize=True)
    logits = clip.logit_scale.exp() * feats @ head.to(feats.dtype)
    bias = getattr(model, "logit_bias", None)
    return logits + bias if bias is not None else logits
