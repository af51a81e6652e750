"""Fair scheduling with a real worker on each stack (Postgres + Redis, and ``saft serve`` on the embedded
default): one worker, tenant alpha queues four jobs, then tenant beta one; beta's starts before alpha's third.

The jobs are quick to run: their dataset's files are removed from the artifact store after the upload (as a
lost disk would), so each job starts, fails while loading, and the worker takes the next; alpha's last two are cancelled once
beta's has run. The rules themselves
(turns, shares, priorities, the window under concurrent dispatchers) are in test_dispatch.py.
"""

from __future__ import annotations

import shutil

import httpx

from tests.fixtures.stack import Stack, stack_settings, wait_for_job

ENDED = {"succeeded", "failed", "cancelled"}


def doomed_dataset(stack: Stack, c: httpx.Client, archive: bytes) -> str:
    r = c.post("/v1/datasets", data={"name": "doomed"}, files={"file": ("s.zip", archive)})
    assert r.status_code == 201, r.text
    shutil.rmtree(stack.data_dir / "datasets" / r.json()["id"])
    return r.json()["id"]


def test_with_one_worker_another_tenants_job_starts_before_the_third_of_a_long_queue(
    stack: Stack, shapes_zip: bytes
) -> None:
    with stack.client("alpha") as a, stack.client("beta") as b:
        ds_a, ds_b = doomed_dataset(stack, a, shapes_zip), doomed_dataset(stack, b, shapes_zip)
        r = b.post("/v1/jobs", json={"dataset_id": ds_b, "priority": "urgent"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "priority", r.text
        a_ids = [a.post("/v1/jobs", json={"dataset_id": ds_a}).json()["id"] for _ in range(4)]
        b_job = b.post("/v1/jobs", json={"dataset_id": ds_b, "priority": "high"}).json()
        assert b_job["priority"] == "high" and a.get(f"/v1/jobs/{a_ids[0]}").json()["priority"] == "normal"
        if stack.kind == "postgres+redis":  # one message in the broker at most; the rest wait in the store
            import redis

            broker = redis.Redis.from_url(stack_settings(stack).celery_broker_url)
            assert broker.llen(stack.env["SAFT_QUEUE_NAME"]) <= 1
        # Once beta's job has ended, alpha's last two are cancelled (at once while still queued).
        wait_for_job(b, b_job["id"], until=ENDED, timeout=180)
        for i in a_ids[2:]:
            a.post(f"/v1/jobs/{i}/cancel")
        owned = [(a, i) for i in a_ids] + [(b, b_job["id"])]
        done = {i: wait_for_job(c, i, until=ENDED, timeout=180) for c, i in owned}
        started = sorted((d for d in done.values() if d["started_at"]), key=lambda d: d["started_at"])
        ids = [d["id"] for d in started]
        assert [i for i in ids if i in a_ids] == a_ids[: len(ids) - 1], ids  # alpha's in the order they came
        assert b_job["id"] in ids and (a_ids[2] not in ids or ids.index(b_job["id"]) < ids.index(a_ids[2])), ids
        assert all(done[i]["status"] == "failed" and done[i]["error"]["code"] == "invalid_dataset" for i in ids), done
        for c, i in owned:
            events = c.get(f"/v1/jobs/{i}/events").json()["data"]
            assert sum(e["message"] == "job started" for e in events) == (i in ids)  # each ran once, if at all
