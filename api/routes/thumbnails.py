"""Small previews of a dataset's images, for people (the console's dataset page)."""

from __future__ import annotations

import io
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from saft_core.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image

from ..deps import StorageDep, TenantDataset
from ..problems import AUTH_RESPONSES, NOT_FOUND, ProblemError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=AUTH_RESPONSES)

MAX_THUMBNAIL_PX = 256


@router.get(
    "/{dataset_id}/thumbnails/{class_id}/{index}",
    response_class=Response,
    responses={**NOT_FOUND, 200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."}},
    summary="A thumbnail of one image of a dataset",
)
def thumbnail(
    dataset: TenantDataset,
    storage: StorageDep,
    class_id: Annotated[str, Path(max_length=300, description="A class folder name (`classes`).")],
    index: Annotated[int, Path(ge=0, description="The image's position in its class (files by name).")],
    size: Annotated[int, Query(ge=16, le=MAX_THUMBNAIL_PX, description="Longest side in pixels.")] = 128,
) -> Response:
    """The `index`-th image of class `class_id` (0 .. counts[class_id] - 1), scaled down to at most `size`
    pixels on its longest side, as JPEG. Private to the tenant; cacheable by the browser."""
    # The class must be one of the stored row's: a name from the URL never becomes a path on its own.
    if class_id not in dataset.classes:
        raise ProblemError(404, "class_not_found", f"dataset {dataset.id} has no class {class_id!r}")
    try:
        folder = storage.dataset_files(dataset) / class_id
    except ValueError as e:  # an external dataset whose import root the operator removed
        raise ProblemError(410, "artifact_missing", f"the images of dataset {dataset.id} are gone") from e
    try:  # the dataset may be deleted while this runs
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        ) if folder.is_dir() else []
    except OSError as e:
        raise ProblemError(410, "artifact_missing", f"the images of class {class_id!r} are gone") from e
    if index >= len(files):
        raise ProblemError(
            404, "image_not_found", f"class {class_id!r} has {len(files)} image(s); index {index} is past the end"
        )
    try:
        im = decode_image(files[index], draft=(size, size))  # JPEG: decoded at a reduced scale, cheaper
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    except (ImageDecodeError, OSError) as e:
        # The reason stays in the log: an OSError's text names the server's path.
        log.warning("thumbnail of %s/%s/%d: %s", dataset.id, class_id, index, e)
        raise ProblemError(410, "artifact_missing", f"image {index} of {class_id!r} cannot be read") from e
    return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
