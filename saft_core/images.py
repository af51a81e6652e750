"""The one image decoder: every image the project reads (datasets, the CLI, uploads, classify, thumbnails)
goes through ``decode_image``, so each caller refuses the same files for the same reasons.

Decoding means, in order: read the header and refuse an image over the pixel limit before its pixels are
decoded; optionally let a JPEG decode at a reduced scale (``draft``); decode; turn it upright by its EXIF
orientation (phone photos are stored sideways with a tag saying so); convert to RGB. Failures are
``ImageDecodeError``s with a stable code: ``image_too_large`` (over the limit, or what PIL calls a
decompression bomb where the caller made its warning an error) or ``invalid_image`` (anything else). The
message is the reason alone; callers say which file it was.

PIL only: no torch, so the API's upload path stays light.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# What PIL raises on a file it cannot decode: UnidentifiedImageError and truncated data are OSErrors; some
# plugins raise ValueError, SyntaxError (a malformed header) or EOFError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
_ORIENTATION = 0x0112  # the EXIF orientation tag; 1 means upright


class ImageDecodeError(DataError):
    """An image was refused. ``code`` is ``image_too_large`` or ``invalid_image``; the message is the reason."""

    code = "invalid_image"


def _check_pixels(im: Image.Image, max_pixels: int | None) -> None:
    """Refuse an opened (not yet decoded) image over ``max_pixels`` (width x height, read from its header)."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(
            f"the image is {w} x {h} = {w * h} pixels; the limit is {max_pixels}", code="image_too_large"
        )


def decode_image(
    source: str | Path | bytes | BinaryIO,
    *,
    max_pixels: int | None = None,
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a file path, bytes or binary file to an upright RGB image, detached from its file.

    ``max_pixels`` bounds width x height (checked from the header). ``draft`` lets a JPEG decode at the
    smallest DCT scale that still covers that size (cheap for big photos); other formats ignore it.
    Raises ``ImageDecodeError``.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError("the file is empty")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            _check_pixels(im, max_pixels)
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", draft)
            im.load()
            upright = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION, 1) != 1 else im
            return upright.convert("RGB")
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # PIL refuses at twice its own limit before we see the size; say our limit, not PIL's.
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        size = re.search(r"\((\d+) pixels\)", str(e))
        shown = f"{size.group(1)} pixels" if size else "over the limit"
        raise ImageDecodeError(f"the image is {shown}; the limit is {limit}", code="image_too_large") from e
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(str(e) or type(e).__name__) from e
