"""The per-tenant storage quota (SAFT_TENANT_STORAGE_BYTES) on its own `saft serve`: uploads, multipart uploads
and job outputs past it are refused with storage_quota_exceeded before anything is written, and leave nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.stack import (
    Proc,
    Stack,
    base_env,
    free_port,
    saft,
    serve_key,
    stored_datasets,
    wait_for_job,
    wait_ready,
    zip_dir,
)

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def quota(shapes_dir: Path) -> int:
    """Room for one extracted shapes dataset and 2,000 bytes more: not for a second one, nor a checkpoint."""
    return sum(p.stat().st_size for p in shapes_dir.rglob("*") if p.is_file()) + 2000


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory, quota: int) -> Iterator[Stack]:
    """`saft serve` with the quota on the embedded default. (Postgres: test_usage_store.py counts on both stores
    in-process, and the client's tests refuse an upload past a quota on a second API of each stack.)"""
    data_dir = tmp_path_factory.mktemp("quota-data")
    env = base_env(data_dir, SAFT_TENANT_STORAGE_BYTES=str(quota))
    port = free_port()
    proc = Proc.start("serve-quota", saft("serve", "--port", str(port)), env)
    stack = Stack("quota", f"http://127.0.0.1:{port}", data_dir, {}, [proc], env)
    try:
        wait_ready(stack)
        stack.keys["alpha"] = serve_key(proc)
        yield stack
    finally:
        proc.stop()


def test_quota_refuses_before_writing_and_counts_every_kind(quota_stack: Stack, shapes_dir: Path, quota: int) -> None:
    stack = quota_stack
    archive = zip_dir(shapes_dir)
    with stack.client() as c:
        usage = c.get("/v1/usage").json()
        assert usage == {"storage_bytes": 0, "storage_quota_bytes": quota, "datasets_bytes": 0, "uploads_bytes": 0,
                         "jobs_bytes": 0}
        # A multipart upload larger than the quota: refused at creation, no row, no folder.
        r = c.post("/v1/uploads", json={"filename": "big.zip", "bytes": quota + 1})
        assert (r.status_code, r.json()["code"]) == (413, "storage_quota_exceeded"), r.text
        assert c.get("/v1/uploads").json()["data"] == []
        assert list((stack.data_dir / "uploads").iterdir()) == []

        first = c.post("/v1/datasets", files={"file": ("a.zip", archive)}, data={"name": "a"})
        assert first.status_code == 201, first.text
        size = first.json()["size_bytes"]
        assert c.get("/v1/usage").json()["datasets_bytes"] == size

        # A second dataset does not fit: refused while extracting (from its headers, before writing), nothing left.
        before = stored_datasets(stack)
        r = c.post("/v1/datasets", files={"file": ("b.zip", archive)}, data={"name": "b"})
        assert (r.status_code, r.json()["code"]) == (413, "storage_quota_exceeded"), r.text
        assert stored_datasets(stack) == before

        # An upload's declared size is reserved: 2,000 bytes fit, 2,001 more do not.
        up = c.post("/v1/uploads", json={"filename": "small.zip", "bytes": 2000})
        assert up.status_code == 201, up.text
        assert c.get("/v1/usage").json()["uploads_bytes"] == 2000
        r = c.post("/v1/uploads", json={"filename": "more.zip", "bytes": 1})
        assert (r.status_code, r.json()["code"]) == (413, "storage_quota_exceeded")
        assert c.delete(f"/v1/uploads/{up.json()['id']}").status_code == 204
        assert c.get("/v1/usage").json()["uploads_bytes"] == 0

        # A job whose outputs would pass the quota fails with that code and leaves no file.
        job = c.post("/v1/jobs", json={"dataset_id": first.json()["id"],
                                       "hyperparameters": {"epochs": 1, "batch_size": 8}}).json()
        done = wait_for_job(c, job["id"], until={"succeeded", "failed"})
        assert (done["status"], done["error"]["code"]) == ("failed", "storage_quota_exceeded"), done
        assert not (stack.data_dir / "jobs" / job["id"]).exists()
        assert c.get("/v1/usage").json()["jobs_bytes"] == 0

        # Deleting the dataset frees its bytes.
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert c.delete(f"/v1/datasets/{first.json()['id']}").status_code == 204
        assert c.get("/v1/usage").json()["storage_bytes"] == 0
