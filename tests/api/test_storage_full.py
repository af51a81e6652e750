"""A full disk, for real: the data dir of a second API and worker is a small tmpfs mounted for this test (needs
root, as CI's container has; skipped, saying why, where mounting is not allowed). The database and the queue are
the Postgres stack's (on another disk), so the service can still record what happened.

Filled to the last byte: /readyz answers 503 with ``low_space``, an upload 507 ``storage_full`` and leaves
nothing behind, a job fails ``storage_full`` and leaves no files; freed, everything works again.
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import Proc, Stack, free_port, saft, wait_for_job, wait_ready, zip_dir

pytestmark = pytest.mark.service

SIZE = 8 * 1024 * 1024


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system refuses with ENOSPC."""
    block = bytes(64 * 1024)
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        try:  # and the last few bytes
            while True:
                f.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


@pytest.fixture(scope="module")
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount = tmp_path_factory.mktemp("tiny-disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def full_stack(pg_stack: Stack, tiny_disk: Path) -> Iterator[Stack]:
    """An API and a worker whose data dir is the tiny disk; same database as ``pg_stack``, own queue."""
    env = {**pg_stack.env, "SAFT_DATA_DIR": str(tiny_disk), "SAFT_QUEUE_NAME": f"saft-full-{secrets.token_hex(4)}",
           "SAFT_MIN_FREE_BYTES": str(1024 * 1024), "SAFT_DATA_WORKERS": "0"}
    port = free_port()
    procs = [
        Proc.start("worker-full", saft("worker"), env),
        Proc.start("api-full", saft("api", "--host", "127.0.0.1", "--port", str(port)), env),
    ]
    stack = Stack("tiny-disk", f"http://127.0.0.1:{port}", tiny_disk, pg_stack.keys, procs, env)
    try:
        wait_ready(stack)
        yield stack
    finally:
        for p in procs:
            p.stop()


def test_a_full_disk_is_storage_full_and_leaves_nothing(full_stack: Stack, shapes_dir: Path) -> None:
    archive = zip_dir(shapes_dir)
    filler = full_stack.data_dir / "filler"
    with full_stack.client() as c:
        # 1. With room: an upload works (the job below trains on it).
        r = c.post("/v1/datasets", data={"name": "before"}, files={"file": ("s.zip", archive)})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        datasets_before = {d["id"] for d in c.get("/v1/datasets", params={"limit": 100}).json()["data"]}
        # 2. Fill the disk to the last byte.
        fill(filler)
        ready = httpx.get(full_stack.base_url + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
        assert ready.json()["checks"]["storage"].startswith("low_space"), ready.json()
        # 3. An upload: 507 storage_full, nothing stored, nothing left in staging.
        r = c.post("/v1/datasets", data={"name": "no-room"}, files={"file": ("s.zip", archive)})
        assert r.status_code == 507, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == "storage_full" and str(full_stack.data_dir) not in r.text
        assert {d["id"] for d in c.get("/v1/datasets", params={"limit": 100}).json()["data"]} == datasets_before
        assert list((full_stack.data_dir / "staging").iterdir()) == []
        # 4. A job: it fails storage_full and leaves no files.
        r = c.post("/v1/jobs", json={"dataset_id": dataset_id, "hyperparameters": {"epochs": 1, "batch_size": 8}})
        assert r.status_code == 201, r.text
        job = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"}, timeout=180)
        assert job["status"] == "failed", f"{job}\n{full_stack.logs()}"
        assert job["error"]["code"] == "storage_full", job["error"]
        assert str(full_stack.data_dir) not in job["error"]["message"]
        assert not (full_stack.data_dir / "jobs" / job["id"]).exists()
        # 5. Freed: ready again, and an upload works.
        os.unlink(filler)
        assert httpx.get(full_stack.base_url + "/readyz", timeout=30).status_code == 200
        r = c.post("/v1/datasets", data={"name": "after"}, files={"file": ("s.zip", archive)})
        assert r.status_code == 201, r.text
