"""Dataset thumbnails: small JPEGs of a tenant's own images, bounded in size, 404 for anything else."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.service


def test_thumbnails_are_small_jpegs_of_the_tenants_own_images(embedded_stack: Stack, shapes_zip: bytes) -> None:
    with embedded_stack.client("alpha") as alpha, embedded_stack.client("beta") as beta:
        ds = alpha.post("/v1/datasets", files={"file": ("s.zip", shapes_zip)}, data={"name": "thumbs"}).json()
        cls = ds["classes"][0]
        url = f"/v1/datasets/{ds['id']}/thumbnails/{cls}"
        try:
            r = alpha.get(f"{url}/0", params={"size": 32})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.format == "JPEG" and max(im.size) == 32  # the 64 px source, scaled down
            last = ds["counts"][cls] - 1
            assert alpha.get(f"{url}/{last}").status_code == 200
            past = alpha.get(f"{url}/{last + 1}")
            assert past.status_code == 404 and past.json()["code"] == "image_not_found"
            assert alpha.get(f"{url}/0", params={"size": 4096}).json()["code"] == "validation_error"
            # A class name is looked up among the dataset's classes, never used as a path on its own.
            for bad in ("..", "nope", "%2e%2e"):
                r = alpha.get(f"/v1/datasets/{ds['id']}/thumbnails/{bad}/0")
                assert r.status_code == 404, (bad, r.text)
            other = beta.get(f"{url}/0")
            assert other.status_code == 404 and other.json()["code"] == "dataset_not_found"
        finally:
            alpha.delete(f"/v1/datasets/{ds['id']}")
