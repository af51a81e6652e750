"""Fair scheduling with a real worker on each stack (Postgres + Redis, and ``saft serve`` on the embedded
default): one worker, tenant alpha queues four jobs, then tenant beta one; beta's starts before alpha's third.

Each job is cancelled as soon as it is seen running, so the test costs a few job starts, not five jobs. The
rules themselves (turns, shares, priorities, the window under concurrent dispatchers) are in test_dispatch.py.
"""

from __future__ import annotations

import httpx

from .conftest import Stack, stack_settings, wait_for_job, wait_until

ENDED = {"succeeded", "failed", "cancelled"}


def upload(c: httpx.Client, archive: bytes) -> str:
    r = c.post("/v1/datasets", data={"name": "shapes"}, files={"file": ("s.zip", archive)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_with_one_worker_another_tenants_job_starts_before_the_third_of_a_long_queue(
    stack: Stack, shapes_zip: bytes
) -> None:
    with stack.client("alpha") as a, stack.client("beta") as b:
        ds_a, ds_b = upload(a, shapes_zip), upload(b, shapes_zip)
        body = {"hyperparameters": {"epochs": 1}}
        r = b.post("/v1/jobs", json={"dataset_id": ds_b, "priority": "urgent", **body})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "priority", r.text
        a_ids = [a.post("/v1/jobs", json={"dataset_id": ds_a, **body}).json()["id"] for _ in range(4)]
        b_job = b.post("/v1/jobs", json={"dataset_id": ds_b, "priority": "high", **body}).json()
        assert b_job["priority"] == "high" and a.get(f"/v1/jobs/{a_ids[0]}").json()["priority"] == "normal"
        if stack.kind == "postgres+redis":  # one message in the broker at most; the rest wait in the store
            import redis

            settings = stack_settings(stack)
            assert redis.Redis.from_url(settings.celery_broker_url).llen(stack.env["SAFT_QUEUE_NAME"]) <= 1
        owners = [(a, i) for i in a_ids] + [(b, b_job["id"])]

        def beta_started() -> bool:
            for c, job_id in owners:  # cut each job short once it runs
                job = c.get(f"/v1/jobs/{job_id}").json()
                if job["status"] == "running" and not job["cancel_requested"]:
                    c.post(f"/v1/jobs/{job_id}/cancel")
            return b.get(f"/v1/jobs/{b_job['id']}").json()["started_at"] is not None

        assert wait_until(beta_started, timeout=180, interval=0.2), stack.logs()
        a_jobs = [a.get(f"/v1/jobs/{i}").json() for i in a_ids]
        assert a_jobs[2]["started_at"] is None and a_jobs[3]["started_at"] is None, a_jobs
        assert a_jobs[0]["started_at"] is not None  # it was first in line
        for c, job_id in owners:
            c.post(f"/v1/jobs/{job_id}/cancel")
        for c, job_id in owners:
            assert wait_for_job(c, job_id, until=ENDED, timeout=120)["status"] == "cancelled"
            started = [e for e in c.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["message"] == "job started"]
            assert len(started) <= 1  # none ran twice
