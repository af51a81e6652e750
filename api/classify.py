"""Classification in the API process: a small LRU of loaded classifiers and image decoding.

Loading a model takes seconds, so classifiers are cached by (model, pretrained, checkpoint sha256, alpha).
Model work runs in the threadpool (routes are sync) and one call at a time (a lock), so two requests do not
fight over the same cores or GPU.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from saft_core.config import ModelSpec
from saft_core.inference import Classifier

from .problems import ProblemError

log = logging.getLogger(__name__)

CacheKey = tuple[str, str | None, str | None, float]


class ClassifierCache:
    """Keeps the ``size`` most recently used classifiers."""

    def __init__(self, size: int, device: str | None) -> None:
        self.size = size
        self.device = device
        self._items: OrderedDict[CacheKey, Classifier] = OrderedDict()
        self.lock = threading.Lock()  # guards the cache and serialises model calls

    def get(
        self, spec: ModelSpec, checkpoint: Path | None, checkpoint_sha: str | None, alpha: float
    ) -> Classifier:
        """The classifier for these arguments (caller holds ``self.lock``)."""
        key: CacheKey = (spec.name, spec.pretrained, checkpoint_sha, alpha)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        log.info("loading classifier %s", key)
        clf = Classifier.load(spec, checkpoint=checkpoint, alpha=alpha, device=self.device)
        self._items[key] = clf
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return clf

    def run(
        self,
        spec: ModelSpec,
        checkpoint: Path | None,
        checkpoint_sha: str | None,
        alpha: float,
        work: Callable[[Classifier], list[list[tuple[str, float]]]],
    ) -> tuple[Classifier, list[list[tuple[str, float]]]]:
        with self.lock:
            clf = self.get(spec, checkpoint, checkpoint_sha, alpha)
            return clf, work(clf)


def parse_labels(raw: str | None, max_labels: int = 1000) -> list[str] | None:
    """``labels`` form field: a JSON list of distinct non-empty strings, or None when absent."""
    if raw is None or raw.strip() == "":
        return None
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProblemError(
            422, "invalid_labels", f'labels must be a JSON list of strings, e.g. ["cat", "dog"]: {e}'
        ) from e
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ProblemError(
            422, "invalid_labels", 'labels must be a JSON list of non-empty strings, e.g. ["cat", "dog"]'
        )
    if not 1 <= len(labels) <= max_labels:
        raise ProblemError(422, "invalid_labels", f"give between 1 and {max_labels} labels")
    if len(set(labels)) != len(labels):
        raise ProblemError(422, "invalid_labels", "labels must be distinct")
    return labels


def decode_image(data: bytes, name: str | None, index: int) -> Image.Image:
    """Decode one uploaded image to RGB, or answer 422 saying which file is bad."""
    what = f"image {index} ({name!r})" if name else f"image {index}"
    if not data:
        raise ProblemError(422, "invalid_image", f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise ProblemError(422, "invalid_image", f"{what} is not a decodable image: {e}") from e
