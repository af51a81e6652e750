"""The API process's classifiers: a memory-bounded LRU of loaded models (which request gets which model and
checking its inputs: ``saft_service/classify_request.py``).

Loading a model takes seconds, so classifiers are cached by (model, pretrained, checkpoint sha256, alpha), up
to ``SAFT_CLASSIFIER_CACHE_SIZE`` models and ``SAFT_CLASSIFIER_CACHE_BYTES`` bytes of weights (least recently
used first out). Tenants never wait on one another behind a shared lock: the cache's own lock is held only to
look up or insert an entry, each model has its own lock for loading it once, and inference runs in the
threadpool (routes are sync) without a lock. A model in eval mode under ``no_grad`` is only read, so calls on
the same model can run at once; the heads cached per label set are plain dict entries (a race computes one
twice).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from saft_core.config import ModelSpec
from saft_core.inference import Classifier

log = logging.getLogger(__name__)

CacheKey = tuple[str, str | None, str | None, float]


def model_bytes(clf: Classifier) -> int:
    """Bytes of a classifier's weights and buffers (what it holds in memory, apart from cached heads)."""
    model: torch.nn.Module = clf.loaded.model
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class ClassifierCache:
    """Keeps the most recently used classifiers: at most ``size`` of them and ``max_bytes`` of weights."""

    def __init__(self, size: int, device: str | None, max_bytes: int | None = None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.device = device
        self._items: OrderedDict[CacheKey, tuple[Classifier, int]] = OrderedDict()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts only; never held while loading or classifying

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._items.values())

    def loaded(self) -> list[CacheKey]:
        """Keys of the kept classifiers, least recently used first."""
        with self._lock:
            return list(self._items)

    def get(
        self, spec: ModelSpec, checkpoint: Path | None, checkpoint_sha: str | None, alpha: float
    ) -> Classifier:
        """The classifier for these arguments, loaded once however many requests ask for it at the same time."""
        key: CacheKey = (spec.name, spec.pretrained, checkpoint_sha, alpha)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # only requests for this same model wait here
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
            log.info("loading classifier %s", key)
            clf = Classifier.load(spec, checkpoint=checkpoint, alpha=alpha, device=self.device)
            self._insert(key, clf, model_bytes(clf))
        with self._lock:
            self._loading.pop(key, None)
        return clf

    def _insert(self, key: CacheKey, clf: Classifier, nbytes: int) -> None:
        with self._lock:
            if self.max_bytes is not None and nbytes > self.max_bytes:
                log.warning(
                    "classifier %s has %d bytes of weights, more than SAFT_CLASSIFIER_CACHE_BYTES=%d; "
                    "it is used for this request and not kept",
                    key,
                    nbytes,
                    self.max_bytes,
                )
                return
            self._items[key] = (clf, nbytes)
            total = sum(n for _, n in self._items.values())
            while len(self._items) > self.size or (self.max_bytes is not None and total > self.max_bytes):
                old, (_, freed) = self._items.popitem(last=False)  # in-flight requests keep their reference
                total -= freed
                log.info("evicted classifier %s (%d bytes)", old, freed)

    def run(
        self,
        spec: ModelSpec,
        checkpoint: Path | None,
        checkpoint_sha: str | None,
        alpha: float,
        work: Callable[[Classifier], list[list[tuple[str, float]]]],
    ) -> tuple[Classifier, list[list[tuple[str, float]]]]:
        clf = self.get(spec, checkpoint, checkpoint_sha, alpha)
        return clf, work(clf)
