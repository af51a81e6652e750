"""Classification in the API process: a small LRU of loaded classifiers and image decoding.

Loading a model takes seconds, so classifiers are cached by (model, pretrained, checkpoint sha256, alpha).
Model work runs in the threadpool (routes are sync) and one call at a time (a lock), so two requests do not
fight over the same cores or GPU.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from saft_core.config import ModelSpec
from saft_core.data import check_image_size
from saft_core.errors import DataError
from saft_core.inference import Classifier
from saft_service.limits import LimitError, check_name, loads_bounded
from saft_service.settings import Settings

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


# Large JPEGs are decoded at a reduced scale (DCT scaling) no smaller than this; the model sees 224 px or so.
_DRAFT_SIZE = (1024, 1024)


def decode_image(data: bytes, name: str | None, index: int, max_pixels: int) -> Image.Image:
    """Decode one uploaded image to RGB, or answer 422 saying which file is bad.

    The size is read from the header first: an image over ``max_pixels`` is refused (``image_too_large``)
    without being decoded. JPEGs are decoded at a reduced scale where that still leaves enough pixels."""
    what = f"image {index}"
    if not data:
        raise ProblemError(422, "invalid_image", f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            check_image_size(im, max_pixels)
            if im.format == "JPEG":
                im.draft("RGB", _DRAFT_SIZE)
            im.load()
            return im.convert("RGB")
    except DataError as e:
        raise ProblemError(422, e.code, f"{what}: {e.message} (SAFT_MAX_IMAGE_PIXELS)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ProblemError(422, "image_too_large", f"{what}: {e}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ProblemError(422, "invalid_image", f"{what} is not a decodable image: {e}") from e
