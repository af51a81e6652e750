"""Hostile requests that the corpus in ``test_hostile.py`` cannot express as one request and one answer: a
classify whose head would be too costly, methods a path does not have, and a body that never arrives."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from saft_service import db, jobs, keys
from saft_service.jobspec import JobSpec
from saft_service.tables import Checkpoint
from tests.fixtures.stack import Stack, stack_settings, zip_dir

pytestmark = pytest.mark.service

PROBLEM = "application/problem+json"


def test_classify_with_a_job_of_many_templates_is_refused_before_any_work(pg_stack: Stack, shapes_dir: Path) -> None:
    """100 templates x 101 labels = 10,100 prompts, over SAFT_MAX_CLASSIFY_PROMPTS (10,000): 422 before the
    model, the checkpoint or an image is touched. The job is stored as succeeded with a checkpoint row whose
    file does not exist, so any work past the check would fail another way."""
    with pg_stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "prompts"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
        assert r.status_code == 201, r.text
        ds = r.json()["id"]
        with db.session_scope(stack_settings(pg_stack)) as s:
            tenant = keys.authenticate(s, pg_stack.keys["alpha"])
            assert tenant is not None
            spec = JobSpec(dataset_id=ds, templates=[f"{i} {{}}" for i in range(100)])
            job = jobs.create(s, tenant_id=tenant.id, dataset_id=ds, spec=spec.model_dump(mode="json"))
            job.status = jobs.JobStatus.SUCCEEDED.value
            s.add(Checkpoint(job_id=job.id, path=f"jobs/{job.id}/missing.safetensors", sha256="0" * 64,
                             size_bytes=1, base_model="saft-tiny", pretrained="saft-tiny", base_sha256="0" * 64,
                             classes=["a", "b", "c"]))
            job_id = job.id
        try:
            labels = json.dumps([f"label {i}" for i in range(101)])
            r = c.post("/v1/classify", data={"job_id": job_id, "labels": labels},
                       files=[("images", ("a.png", b"not even an image"))])
            assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
            problem = r.json()
            assert problem["code"] == "too_many_prompts", problem
            assert "101 labels x 100 templates = 10100 prompts" in problem["detail"], problem
            assert "SAFT_MAX_CLASSIFY_PROMPTS" in problem["detail"]
        finally:
            assert c.delete(f"/v1/jobs/{job_id}").status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/v1/jobs/job_0123456789abcdef", {"GET", "DELETE"}),
        ("PUT", "/v1/jobs", {"GET", "POST"}),
        ("PATCH", "/v1/datasets/ds_0123456789abcdef", {"GET", "DELETE"}),
    ],
)
def test_405_lists_every_method_of_the_path(pg_stack: Stack, method: str, path: str, allowed: set[str]) -> None:
    with pg_stack.client() as c:
        r = c.request(method, path)
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM, r.text
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, r.headers["allow"]
    assert r.json()["code"] == "method_not_allowed" and method in r.json()["detail"]


def read_reply(s: socket.socket) -> str:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_a_body_that_stops_arriving_answers_408(idle_api: Stack, kind: str) -> None:
    """``idle_api`` waits SAFT_REQUEST_BODY_TIMEOUT=2 s for body bytes. The request declares more than it
    sends and then sends nothing: 408 ``request_timeout`` and the connection closes (the socket's own timeout,
    far longer, would fail the test instead)."""
    host, port = idle_api.base_url.removeprefix("http://").split(":")
    if kind == "json":
        head, start = "POST /v1/jobs HTTP/1.1\r\nContent-Type: application/json\r\n", b'{"dataset_id": "ds_'
    else:
        head = "POST /v1/datasets HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        start = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.zip"\r\n\r\nPK'
    head += f"Host: {host}\r\nAuthorization: Bearer {idle_api.keys['alpha']}\r\nContent-Length: 5000\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode() + start)
        reply = read_reply(s)
    assert reply.startswith("HTTP/1.1 408"), reply
    assert PROBLEM in reply and '"code":"request_timeout"' in reply and "SAFT_REQUEST_BODY_TIMEOUT" in reply, reply
