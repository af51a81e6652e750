"""A tenant's quota of queued and running jobs (SAFT_MAX_ACTIVE_JOBS): 429 past it, per tenant, freed by a cancel."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.stack import Proc, Stack, create_key, free_port, saft, wait_for_job, wait_ready, zip_dir

pytestmark = pytest.mark.service


def test_active_job_quota_is_per_tenant_and_freed_by_cancel(pg_stack: Stack, shapes_dir: Path) -> None:
    # A second API process on the same database and queue, with a quota of 2; pg_stack's worker runs the jobs.
    env = {**pg_stack.env, "SAFT_MAX_ACTIVE_JOBS": "2"}
    port = free_port()
    api = Proc.start("api-quota", saft("api", "--host", "127.0.0.1", "--port", str(port)), env)
    keys = {"quota": create_key(env, "quota"), "alpha": pg_stack.keys["alpha"]}
    stack = Stack("quota", f"http://127.0.0.1:{port}", pg_stack.data_dir, keys, [api], env)
    try:
        wait_ready(stack)
        with stack.client("quota") as c:
            r = c.post("/v1/datasets", data={"name": "q"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
            assert r.status_code == 201, r.text
            long_job = {"dataset_id": r.json()["id"], "hyperparameters": {"epochs": 500, "batch_size": 2}}
            first = c.post("/v1/jobs", json=long_job).json()
            second = c.post("/v1/jobs", json=long_job).json()
            r = c.post("/v1/jobs", json=long_job)
            assert r.status_code == 429, r.text
            assert r.json()["code"] == "too_many_active_jobs" and "2 queued or running jobs" in r.json()["detail"]
            assert r.headers["retry-after"] == "30"
            assert len(c.get("/v1/jobs").json()["data"]) == 2  # the refused request stored nothing
            # Another tenant's quota is its own: it can still submit (and cancels at once, to free the worker).
            with stack.client("alpha") as other:
                ds = other.post("/v1/datasets", data={"name": "q-alpha"},
                                files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
                r = other.post("/v1/jobs", json={**long_job, "dataset_id": ds["id"]})
                assert r.status_code == 201, r.text
                assert other.post(f"/v1/jobs/{r.json()['id']}/cancel").json()["status"] == "cancelled"
            # A cancel frees a slot.
            assert c.post(f"/v1/jobs/{second['id']}/cancel").json()["status"] == "cancelled"
            third = c.post("/v1/jobs", json=long_job)
            assert third.status_code == 201, third.text
            for job in (first, third.json()):
                c.post(f"/v1/jobs/{job['id']}/cancel")
            for job in (first, third.json()):
                assert wait_for_job(c, job["id"], until={"cancelled", "failed", "succeeded"}, timeout=120)[
                    "status"] == "cancelled"
    finally:
        api.stop()
