"""Operating the service: Prometheus metrics (API and worker), request ids, JSON log lines."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from saft_core.results import STAGES
from tests.fixtures.stack import Stack, second_api, wait_for_job, wait_until, zip_dir

pytestmark = pytest.mark.service

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_metrics_url(stack: Stack) -> str:
    url = f"http://127.0.0.1:{stack.env['SAFT_WORKER_METRICS_PORT']}/metrics"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, timeout=60), f"the worker serves no metrics at {url}\n{stack.logs()}"
    return url


def json_lines(lines: list[str]) -> list[dict]:
    """The JSON log records among a process's output lines (Celery's start-up banner is printed, not logged)."""
    return [json.loads(ln) for ln in lines if ln.startswith("{")]


def test_metrics_move_after_a_job(stack: Stack, shapes_dir: Path) -> None:
    tenant = {"postgres+redis": "alpha", "embedded": "default"}[stack.kind]  # the name behind keys["alpha"]
    api_url, worker_url = f"{stack.base_url}/metrics", worker_metrics_url(stack)
    api_before, worker_before = scrape(api_url), scrape(worker_url)
    archive = zip_dir(shapes_dir)
    request_id = f"metrics-{secrets.token_hex(4)}"
    with stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "metrics"}, files={"file": ("s.zip", archive)},
                   headers={"X-Request-ID": request_id})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == request_id
        body = {"dataset_id": r.json()["id"], "validation_fraction": 0.25,
                "hyperparameters": {"epochs": 1, "batch_size": 6}}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", f"{job}\n{stack.logs()}"
        stored = c.get("/v1/usage").json()["storage_bytes"]
    api, worker = scrape(api_url), scrape(worker_url)

    # Read from the store at scrape time.
    assert value(api, "saft_store_up") == 1
    assert value(api, "saft_jobs", status="succeeded") >= value(api_before, "saft_jobs", status="succeeded") + 1
    assert ("saft_queue_depth", ()) in api and ("saft_broker_queued_jobs", ()) in api
    assert value(api, "saft_tenant_storage_bytes", tenant=tenant) == stored > 0  # what /v1/usage says
    # Counted by the API: by route template (the job's id is in no label), and the bytes uploaded.
    polled = ("saft_http_request_duration_seconds_count", dict(method="GET", route="/v1/jobs/{job_id}", status="200"))
    assert value(api, polled[0], **polled[1]) > value(api_before, polled[0], **polled[1])
    assert not [k for k in api if job["id"] in repr(k)]
    uploaded = value(api, "saft_upload_bytes_total", route="/v1/datasets")
    assert uploaded >= value(api_before, "saft_upload_bytes_total", route="/v1/datasets") + len(archive)
    # Counted by the worker, in the job's own process, served by the worker's port.
    for name, labels in [("saft_job_duration_seconds_count", {"status": "succeeded"}),
                         ("saft_job_attempts_total", {"kind": "first"}),
                         *[("saft_job_stage_duration_seconds_count", {"stage": s}) for s in STAGES]]:
        assert value(worker, name, **labels) >= value(worker_before, name, **labels) + 1, (name, labels)
    assert value(worker, "saft_job_duration_seconds_sum", status="succeeded") > value(
        worker_before, "saft_job_duration_seconds_sum", status="succeeded")

    if stack.kind == "embedded":  # its API and worker log JSON lines (SAFT_LOG_FORMAT=json)
        records = json_lines(stack.procs[0].lines)
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r.get("request_id") == request_id and r.get("tenant") == tenant for r in records), stack.logs()
        ran = [r for r in records if r.get("job_id") == job["id"] and r["logger"].startswith("worker.")]
        assert ran and all(r.get("tenant") == tenant for r in ran), stack.logs()
        assert any(f"job {job['id']}: stage training" == r["message"] for r in ran)


def test_two_api_processes_answer_one_sum_behind_a_token(pg_stack: Stack) -> None:
    token = secrets.token_urlsafe(16)
    with second_api(pg_stack, "api-two", workers=2, SAFT_METRICS_TOKEN=token, SAFT_LOG_FORMAT="json",
                    SAFT_RUN_REAPER="false") as two:
        url = f"{two.base_url}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            r = httpx.get(url, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", (headers, r.text)
            assert r.json()["request_id"] == r.headers["x-request-id"]
        # Both processes count into one answer, whichever of them gives it.
        assert wait_until(lambda: value(scrape(url, token), "saft_api_processes") == 2, timeout=60), two.logs()
        listed = ("saft_http_request_duration_seconds_count", dict(method="GET", route="/v1/datasets", status="200"))
        before = value(scrape(url, token), listed[0], **listed[1])
        ids = [f"two-{i}-{secrets.token_hex(3)}" for i in range(12)]
        with two.client() as c:
            for request_id in ids:
                # a new connection each time, so that the kernel may hand it to either process
                r = httpx.get(f"{two.base_url}/v1/datasets", headers={**c.headers, "X-Request-ID": request_id})
                assert r.status_code == 200 and r.headers["x-request-id"] == request_id
        for _ in range(4):
            assert value(scrape(url, token), listed[0], **listed[1]) >= before + len(ids)
        # Its log lines are JSON, with the request's id and tenant.
        records = json_lines(two.procs[0].lines)
        logged = {r["request_id"] for r in records if r.get("tenant") == "alpha" and "request_id" in r}
        assert set(ids) <= logged, two.logs()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123_req.7", True), ("trace:4bf92f/00f0=+@", True), ("two words", False), ("x" * 129, False),
     ("", False), (None, False)],
)
def test_request_id_is_echoed_or_made(pg_stack: Stack, sent: str | None, kept: bool) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    r = httpx.get(f"{pg_stack.base_url}/healthz", headers=headers)
    assert r.status_code == 200
    if kept:
        assert r.headers["x-request-id"] == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers


def test_problem_documents_carry_the_request_id(pg_stack: Stack) -> None:
    with pg_stack.client() as c:
        r = c.get("/v1/jobs/job_doesnotexist", headers={"X-Request-ID": "find-me-42"})
        assert r.status_code == 404 and r.json()["code"] == "job_not_found"
        assert r.json()["request_id"] == "find-me-42" == r.headers["x-request-id"]
        assert r.headers.get_list("x-request-id") == ["find-me-42"]  # once, though two layers know it
    # Refused by a middleware before any route ran: an id is made, and the body and the header agree.
    r = httpx.post(f"{pg_stack.base_url}/v1/jobs", json={"dataset_id": "ds_x"})
    assert r.status_code == 401
    assert r.json()["request_id"] == r.headers["x-request-id"] and len(r.headers["x-request-id"]) == 32


def test_an_unexpected_error_keeps_the_request_id_in_its_answer_and_log(tmp_path: Path) -> None:
    """The handler of unexpected errors answers outside the middleware that sets the header (in-process app)."""
    import io
    import logging

    from fastapi.testclient import TestClient

    from api.main import create_app
    from saft_service.logs import JsonFormatter
    from saft_service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, run_reaper=False))

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("api.problems")
    logger.addHandler(handler)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/v1/boom", headers={"X-Request-ID": "rid-500"})
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    assert r.json()["request_id"] == "rid-500" and r.headers.get_list("x-request-id") == ["rid-500"]
    (line,) = [json.loads(ln) for ln in out.getvalue().splitlines() if "unhandled error" in ln]
    assert line["request_id"] == "rid-500" and "RuntimeError: kaboom" in line["exception"]
