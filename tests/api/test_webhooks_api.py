"""Webhooks through the API on both stacks: a real job's end reaches a real receiver, signed (checked here with
hmac directly); a failing receiver gets retries with the same id, each attempt listed; tenants are apart;
private addresses are refused at registration."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from saft_client import AsyncClient, Client, webhooks

from tests.fixtures.receiver import receiver, signed_by
from tests.fixtures.stack import Stack, second_api, wait_for_job, wait_until, zip_dir

pytestmark = pytest.mark.service


def test_a_job_that_ends_is_delivered_signed_and_retried(stack: Stack, shapes_dir: Path) -> None:
    with receiver() as ok, receiver([500]) as flaky, stack.client() as c:
        r = c.post("/v1/webhooks", json={"url": ok.url})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["events"] == ["job.succeeded", "job.failed", "job.cancelled", "job.warning"]
        assert hook["secret"].startswith("whsec_")
        r = c.post("/v1/webhooks", json={"url": flaky.url, "events": ["job.cancelled"]})
        assert r.status_code == 201, r.text
        flaky_hook = r.json()
        listed = {h["id"]: h for h in c.get("/v1/webhooks").json()["data"]}
        assert {hook["id"], flaky_hook["id"]} <= set(listed)
        assert "secret" not in listed[hook["id"]] and "secret" not in c.get(f"/v1/webhooks/{hook['id']}").json()

        ds = c.post("/v1/datasets", data={"name": "wh"}, files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
        body = {"dataset_id": ds["id"], "validation_fraction": 0.25, "hyperparameters": {"epochs": 1, "batch_size": 6}}
        ran = c.post("/v1/jobs", json=body).json()
        cancelled = c.post("/v1/jobs", json=body).json()
        assert c.post(f"/v1/jobs/{cancelled['id']}/cancel").status_code == 200
        assert wait_for_job(c, ran["id"], until={"succeeded", "failed", "cancelled"})["status"] == "succeeded"
        wait_for_job(c, cancelled["id"], until={"cancelled"})

        got = wait_until(lambda: ok.for_job(ran["id"]) and ok.for_job(cancelled["id"]) and
                         len(flaky.for_job(cancelled["id"])) >= 2, timeout=30)
        assert got, (ok.requests, flaky.requests, stack.logs())
        [succeeded], [told_cancel] = ok.for_job(ran["id"]), ok.for_job(cancelled["id"])
        for message, kind in ((succeeded, "job.succeeded"), (told_cancel, "job.cancelled")):
            assert signed_by(hook["secret"], message)
            assert not signed_by(flaky_hook["secret"], message)
            payload = json.loads(message.body)
            assert payload["type"] == kind and payload["data"]["status"] == kind.split(".")[1]
        assert flaky.for_job(ran["id"]) == []  # not subscribed to job.succeeded
        first, second = flaky.for_job(cancelled["id"])
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert signed_by(flaky_hook["secret"], first) and signed_by(flaky_hook["secret"], second)

        # each attempt is visible, under the id the receiver saw
        page = c.get(f"/v1/webhooks/{flaky_hook['id']}/deliveries").json()["data"]
        [delivery] = [d for d in page if d["job_id"] == cancelled["id"]]
        assert delivery["id"] == first.headers["webhook-id"] and delivery["status"] == "delivered"
        assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [(1, 500), (2, 200)]
        assert delivery["payload"] == json.loads(first.body) and delivery["next_attempt_at"] is None

        # the Python client: the same listing, and its verify accepts what the test's own check accepts
        with Client(stack.base_url, stack.keys["alpha"]) as sc:
            listed_by_client = [d for d in sc.webhooks.deliveries(flaky_hook["id"]) if d.job_id == cancelled["id"]]
            assert [a.status_code for a in listed_by_client[0].attempts] == [500, 200]
            assert sc.webhooks.get(hook["id"]).url == ok.url
        assert webhooks.verify(first.body, first.headers, flaky_hook["secret"])["type"] == "job.cancelled"

        async def async_list() -> list[str]:
            async with AsyncClient(stack.base_url, stack.keys["alpha"]) as ac:
                return [h.id async for h in ac.webhooks.list()]

        assert {hook["id"], flaky_hook["id"]} <= set(asyncio.run(async_list()))

        # another tenant sees none of it
        with stack.client("beta") as other:
            for method, path in (("GET", ""), ("GET", "/deliveries"), ("POST", "/rotate-secret"), ("DELETE", "")):
                r = other.request(method, f"/v1/webhooks/{hook['id']}{path}")
                assert r.status_code == 404 and r.json()["code"] == "webhook_not_found", (method, path, r.text)
            assert hook["id"] not in [h["id"] for h in other.get("/v1/webhooks").json()["data"]]

        r = c.post(f"/v1/webhooks/{hook['id']}/rotate-secret")
        assert r.status_code == 200 and r.json()["secret"].startswith("whsec_")
        assert r.json()["secret"] != hook["secret"]
        for h in (hook, flaky_hook):
            assert c.delete(f"/v1/webhooks/{h['id']}").status_code == 204
            assert c.get(f"/v1/webhooks/{h['id']}/deliveries").status_code == 404


def test_private_addresses_are_refused_at_registration(pg_stack: Stack) -> None:
    with second_api(pg_stack, "api-strict", SAFT_WEBHOOK_ALLOW_PRIVATE="false", SAFT_MAX_WEBHOOKS="1",
                    SAFT_RUN_REAPER="false") as strict, strict.client("beta") as c:
        for url in ("http://127.0.0.1:8000/hook", "http://localhost/hook", "http://10.0.0.5/hook",
                    "http://192.168.1.1/", "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data/",
                    "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/"):
            r = c.post("/v1/webhooks", json={"url": url})
            assert r.status_code == 422 and r.json()["code"] == "webhook_url_not_allowed", (url, r.text)
        for url in ("ftp://example.com/hook", "http://user:pw@example.com/"):
            r = c.post("/v1/webhooks", json={"url": url})
            assert r.status_code == 422 and r.json()["code"] == "invalid_webhook_url", (url, r.text)
        for body in ({"url": "http://93.184.216.34/hook", "events": ["job.exploded"]},
                     {"url": "http://93.184.216.34/a\r\nX-Injected: 1"}):
            r = c.post("/v1/webhooks", json=body)
            assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text
        assert c.get("/v1/webhooks").json()["data"] == []
        # a public address is taken, up to the tenant's limit
        public = c.post("/v1/webhooks", json={"url": "http://93.184.216.34/hook"})
        assert public.status_code == 201, public.text
        try:
            r = c.post("/v1/webhooks", json={"url": "http://93.184.216.34/other"})
            assert r.status_code == 409 and r.json()["code"] == "webhook_limit_reached"
        finally:
            assert c.delete(f"/v1/webhooks/{public.json()['id']}").status_code == 204
