"""Classify images with a base model (zero-shot) or a base model plus a delta checkpoint."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import SparseDelta, apply_delta, load_delta
from .config import DEFAULT_TEMPLATES, ModelSpec, check_template
from .errors import ConfigError
from .frontier import DEFAULT_ALPHA, AlphaChoice, resolve_alpha
from .models import LoadedModel, load_model
from .zeroshot import build_head, clip_logits


class Classifier:
    """A loaded model, optionally with a checkpoint applied at ``alpha``. Heads are cached per label set (the
    ``max_heads`` most recently used: a head is labels x embedding floats, and callers may send any labels)."""

    max_heads = 16

    def __init__(self, loaded: LoadedModel, delta: SparseDelta | None, alpha: float) -> None:
        self.loaded = loaded
        self.delta = delta
        self.alpha = alpha
        self.classes: list[str] | None = delta.classes if delta else None
        self.templates: list[str] = (delta.templates if delta and delta.templates else list(DEFAULT_TEMPLATES))
        self._heads: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._heads_lock = threading.Lock()  # the API classifies on one instance from several threads

    @classmethod
    def load(
        cls,
        spec: ModelSpec | None = None,
        checkpoint: str | Path | None = None,
        alpha: AlphaChoice = DEFAULT_ALPHA,
        device: str | None = None,
    ) -> Classifier:
        """Load the base model; with ``checkpoint``, the base comes from its metadata unless ``spec`` is given,
        and the checkpoint must match the base weights (sha256). ``alpha`` may be ``"recommended"``: the
        checkpoint's recommended alpha (1 when it has none); ``Classifier.alpha`` is the one applied."""
        delta = load_delta(checkpoint) if checkpoint is not None else None
        alpha = resolve_alpha(alpha, delta.recommended_alpha if delta is not None else None)
        if spec is None:
            spec = delta.base_spec() if delta is not None else ModelSpec()
        loaded = load_model(spec, device)
        if delta is not None:
            apply_delta(loaded.model, delta, alpha=alpha, base_sha256=loaded.sha256)
        return cls(loaded, delta, alpha)

    def head(self, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        key = (tuple(labels), tuple(templates))
        with self._heads_lock:
            head = self._heads.get(key)
        if head is None:  # built outside the lock: callers on other label sets do not wait for it
            for t in templates:  # a checkpoint's templates are checked like a caller's
                check_template(t)
            head = build_head(self.loaded.model, self.loaded.tokenizer, labels, templates, self.loaded.device)
        with self._heads_lock:
            self._heads[key] = head
            self._heads.move_to_end(key)
            while len(self._heads) > self.max_heads:
                self._heads.popitem(last=False)
        return head

    @torch.no_grad()
    def probabilities(
        self, images: Sequence[Image.Image], labels: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> tuple[list[str], torch.Tensor]:
        """(labels, probabilities [N, C]) for ``images`` over ``labels`` (default: the checkpoint's classes)."""
        labels = list(labels) if labels else self.classes
        if not labels:
            raise ConfigError("labels are required: this model has no checkpoint classes to default to")
        if len(set(labels)) != len(labels):
            raise ConfigError("labels must be distinct")
        if not images:
            raise ConfigError("no images to classify")
        templates = list(templates) if templates else self.templates
        head = self.head(labels, templates)
        batch = torch.stack([self.loaded.preprocess_eval(im.convert("RGB")) for im in images])
        logits = clip_logits(self.loaded.model, batch.to(self.loaded.device), head).float()
        return labels, logits.softmax(dim=1).cpu()

    def classify(
        self,
        images: Sequence[Image.Image],
        labels: Sequence[str] | None = None,
        top_k: int = 5,
        templates: Sequence[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per image, the ``top_k`` (label, probability) pairs, most likely first."""
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        labels, probs = self.probabilities(images, labels, templates)
        k = min(top_k, len(labels))
        values, indices = probs.topk(k, dim=1)
        return [
            [(labels[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values, indices, strict=True)
        ]
