"""Classification in the API process: a memory-bounded LRU of loaded classifiers, and uploaded images' errors.

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
from PIL import Image

from saft_core.config import ModelSpec
from saft_core.images import ImageDecodeError, decode_image
from saft_core.inference import Classifier
from saft_core.models import parameter_count
from saft_service.input_checks import LimitError, check_name, loads_bounded
from saft_service.settings import Settings

from .problems import ProblemError

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


def parse_labels(raw: str | None, settings: Settings) -> list[str] | None:
    """``labels`` form field: a JSON list of distinct non-empty strings, or None when absent.

    Bounded: at most ``max_labels`` labels of ``max_class_name_chars`` each, no control characters, and the
    JSON no deeper than ``max_json_depth`` (checked before parsing)."""
    if raw is None or raw.strip() == "":
        return None
    try:
        labels = loads_bounded(raw, max_depth=settings.max_json_depth, what="labels")
    except LimitError:
        raise
    except ValueError as e:  # json.JSONDecodeError, NaN/Infinity
        raise ProblemError(
            422, "invalid_labels", f'labels must be a JSON list of strings, e.g. ["cat", "dog"]: {e}'
        ) from e
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ProblemError(
            422, "invalid_labels", 'labels must be a JSON list of non-empty strings, e.g. ["cat", "dog"]'
        )
    if len(labels) > settings.max_labels:
        raise LimitError(
            "too_many_labels", f"{len(labels)} labels; the limit is {settings.max_labels} (SAFT_MAX_LABELS)"
        )
    for i, label in enumerate(labels):
        check_name(label, max_chars=settings.max_class_name_chars, what=f"label {i}", code="label_too_long")
    if not labels:
        raise ProblemError(422, "invalid_labels", "give at least one label")
    if len(set(labels)) != len(labels):
        raise ProblemError(422, "invalid_labels", "labels must be distinct")
    return labels


def check_cost(model: str, labels: int, templates: int, settings: Settings) -> None:
    """Refuse a classify request whose head or model is over the service's limits, before anything is built:
    ``too_many_prompts`` (labels x templates over ``SAFT_MAX_CLASSIFY_PROMPTS``; each prompt is a pass of the
    text encoder) and ``model_too_large`` (more parameters than ``SAFT_CLASSIFY_MAX_PARAMS``, or a size that
    cannot be known without a download)."""
    prompts = labels * templates
    if prompts > settings.max_classify_prompts:
        raise LimitError(
            "too_many_prompts",
            f"{labels} labels x {templates} templates = {prompts} prompts; the limit is "
            f"{settings.max_classify_prompts} (SAFT_MAX_CLASSIFY_PROMPTS); send fewer labels",
        )
    limit = settings.classify_max_params
    if limit is None:
        return
    count = parameter_count(model)
    if count is None:
        raise LimitError(
            "model_too_large",
            f"the size of model {model!r} cannot be checked without downloading it; classify here loads only "
            f"models of at most {limit} parameters (SAFT_CLASSIFY_MAX_PARAMS)",
        )
    if count > limit:
        raise LimitError(
            "model_too_large",
            f"model {model!r} has {count} parameters; classify here loads models of at most {limit} "
            "(SAFT_CLASSIFY_MAX_PARAMS)",
        )


# Large JPEGs are decoded at a reduced scale (DCT scaling) no smaller than this; the model sees 224 px or so.
_DRAFT_SIZE = (1024, 1024)


def decode_upload(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """Decode the ``index``-th uploaded image with the core's decoder, or answer 422 saying which one is bad
    (``invalid_image``, or ``image_too_large`` over ``max_pixels``, refused from its header)."""
    what = f"image {index}"
    if not data:
        raise ProblemError(422, "invalid_image", f"{what} is empty")
    try:
        return decode_image(data, max_pixels=max_pixels, draft=_DRAFT_SIZE)
    except ImageDecodeError as e:
        if e.code == "image_too_large":
            raise ProblemError(422, e.code, f"{what}: {e.message} (SAFT_MAX_IMAGE_PIXELS)") from e
        raise ProblemError(422, e.code, f"{what} is not a decodable image: {e.message}") from e
