"""Deleting a finished job: its rows and files go, other tenants cannot, the service keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from saft_service.settings import Settings
from tests.fixtures.stack import Stack, wait_for_job, zip_dir

pytestmark = pytest.mark.service

CHILD_TABLES = ("job_events", "evaluations", "masks", "mask_tensors", "checkpoints")


def rows_of(stack: Stack, job_id: str) -> dict[str, int]:
    """Rows that belong to ``job_id`` in each child table, read from the store directly."""
    url = Settings(data_dir=stack.data_dir, database_url=stack.env.get("SAFT_DATABASE_URL")).sqlalchemy_url
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE job_id = :j"), {"j": job_id}).scalar_one()
                for t in CHILD_TABLES
            }
    finally:
        engine.dispose()


def test_a_finished_job_is_deleted_with_its_rows_and_files(stack: Stack, shapes_dir: Path) -> None:
    with stack.client() as c:
        ds = c.post("/v1/datasets", data={"name": "del"}, files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
        body = {"dataset_id": ds["id"], "validation_fraction": 0.25, "hyperparameters": {"epochs": 1, "batch_size": 6}}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        job_dir = stack.data_dir / "jobs" / job["id"]
        before = rows_of(stack, job["id"])
        assert job_dir.is_dir() and all(before[t] > 0 for t in CHILD_TABLES), before

        with stack.client("beta") as other:  # another tenant cannot see it, so cannot delete it
            r = other.delete(f"/v1/jobs/{job['id']}")
            assert r.status_code == 404 and r.json()["code"] == "job_not_found"
        assert c.get(f"/v1/jobs/{job['id']}").status_code == 200

        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 204 and r.content == b""
        for path in ("", "/events", "/mask", "/checkpoint", "/evaluations"):
            r = c.get(f"/v1/jobs/{job['id']}{path}")
            assert r.status_code == 404 and r.json()["code"] == "job_not_found", (path, r.text)
        assert job["id"] not in [j["id"] for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"]]
        assert rows_of(stack, job["id"]) == dict.fromkeys(CHILD_TABLES, 0)
        assert not job_dir.exists()
        r = c.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 404 and r.json()["code"] == "job_not_found"
        # the dataset it trained on is untouched, and the service keeps serving
        assert c.get(f"/v1/datasets/{ds['id']}").status_code == 200
        assert c.delete(f"/v1/datasets/{ds['id']}").status_code == 204
