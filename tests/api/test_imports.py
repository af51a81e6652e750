"""Datasets already on the server, registered in place from the operator's import roots (both stores): read
where they are, never deleted by the service, and every path that leaves a root refused with one answer."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import Stack, render, stored_datasets, tar_gz_dir, wait_for_job

pytestmark = pytest.mark.service


def import_path(c: httpx.Client, path: str | Path, name: str = "imported") -> httpx.Response:
    return c.post("/v1/datasets", json={"name": name, "source": {"type": "path", "path": str(path)}})


def test_a_folder_is_read_in_place_and_never_deleted(stack: Stack, tmp_path: Path) -> None:
    assert stack.import_root is not None
    folder = render(stack.import_root / f"eval-{stack.kind}", per_class=4, seed=3)
    before = stored_datasets(stack)
    with stack.client() as c:
        r = import_path(c, folder)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert (ds["external"], ds["source_path"], ds["num_images"]) == (True, str(folder.resolve()), 12)
        assert stored_datasets(stack) == before  # nothing copied into the store
        assert c.get("/v1/usage").json()["datasets_bytes"] == sum(
            d["size_bytes"] for d in c.get("/v1/datasets", params={"limit": 100}).json()["data"] if not d["external"])
        thumb = c.get(f"/v1/datasets/{ds['id']}/thumbnails/{ds['classes'][0]}/0")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        # A job evaluates on it where it is.
        train = c.post("/v1/datasets", files={"file": ("t.tgz", tar_gz_dir(render(tmp_path / "t", 4, 0)))},
                       data={"name": "train"}).json()
        job = c.post("/v1/jobs", json={"dataset_id": train["id"], "eval_dataset_ids": [ds["id"]],
                                       "hyperparameters": {"epochs": 1, "batch_size": 8}}).json()
        done = wait_for_job(c, job["id"], until={"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        evals = c.get(f"/v1/jobs/{job['id']}/evaluations").json()["data"]
        assert {e["n"] for e in evals if e["dataset"] == ds["id"]} == {12}
        c.delete(f"/v1/jobs/{job['id']}")
        assert c.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert sorted(p.name for p in folder.iterdir()) == ["blue_square", "classes.json", "green_triangle",
                                                       "red_circle"]
    assert len(list(folder.rglob("*.png"))) == 12


def test_an_archive_under_a_root_is_extracted_into_the_store(stack: Stack, tmp_path: Path) -> None:
    assert stack.import_root is not None
    archive = stack.import_root / f"shifted-{stack.kind}.tar.gz"
    archive.write_bytes(tar_gz_dir(render(tmp_path / "s", 3, 5)))
    with stack.client() as c:
        r = import_path(c, archive, "from archive")
        assert r.status_code == 201, r.text
        assert (r.json()["external"], r.json()["num_images"]) == (False, 9)
        assert r.json()["id"] in stored_datasets(stack)
    assert archive.exists()


def test_paths_that_leave_the_roots_get_one_answer(stack: Stack, tmp_path: Path) -> None:
    root = stack.import_root
    assert root is not None
    outside = render(tmp_path / "outside", per_class=2, seed=1)  # a real dataset, outside every root
    link = root / f"link-out-{stack.kind}"
    link.symlink_to(outside, target_is_directory=True)
    refused = [
        outside,                               # absolute, elsewhere, exists
        tmp_path / "no" / "such" / "dir",      # absolute, elsewhere, does not exist
        f"{root}/../{tmp_path.name}/outside",  # climbs out with '..'
        f"{root}/../nothing-here",             # climbs out, does not exist
        link,                                  # a link inside the root pointing out
        "relative/path",
        "/etc",
    ]
    with stack.client() as c:
        for path in refused:
            r = import_path(c, path)
            assert (r.status_code, r.json()["code"]) == (422, "path_not_allowed"), (path, r.text)
            assert r.json()["detail"].endswith("is not under an import root of this service")
        r = import_path(c, root / "missing-inside")
        assert (r.status_code, r.json()["code"]) == (422, "path_not_found")
        # An image inside an imported folder that links out is refused too.
        leaky = render(root / f"leaky-{stack.kind}", per_class=2, seed=2)
        victim = leaky / "red_circle" / sorted(p.name for p in (leaky / "red_circle").iterdir())[0]
        victim.unlink()
        victim.symlink_to(next(outside.rglob("*.png")))
        r = import_path(c, leaky)
        assert (r.status_code, r.json()["code"]) == (422, "path_not_allowed"), r.text
        assert str(outside) not in r.text and str(leaky) not in r.text
        # Not an ImageFolder: the same checks as an upload.
        bad = root / f"bad-{stack.kind}"
        (bad / "cat" / "deeper").mkdir(parents=True)
        r = import_path(c, bad)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_dataset")
        shutil.rmtree(bad)
        r = c.post("/v1/datasets", json={"name": "x", "source": {"type": "url", "path": "/x"}})
        assert (r.status_code, r.json()["code"]) == (422, "validation_error")
