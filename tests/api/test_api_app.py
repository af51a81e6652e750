"""Narrow tests of the app object (FastAPI's TestClient, SQLite, no worker): the OpenAPI document, a broker
that is down, bodies over the limit without a Content-Length, and recovery after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from saft_service import db, jobs, keys
from saft_service.settings import Settings
from tests.fixtures.stack import zip_dir


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A broker port nothing listens on: enqueueing fails fast.
    s = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:9/0", max_upload_bytes=200_000)
    db.upgrade(s)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with db.session_scope(settings) as session:
        _, key = keys.create_key(session, tenant_name="t")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_openapi_describes_every_route_with_bearer_auth(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path, method in [
        ("/v1/datasets", "post"),
        ("/v1/datasets", "get"),
        ("/v1/datasets/{dataset_id}", "delete"),
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/jobs/{job_id}/events/stream", "get"),
        ("/v1/jobs/{job_id}/mask", "get"),
        ("/v1/jobs/{job_id}/mask/file", "get"),
        ("/v1/jobs/{job_id}/checkpoint", "get"),
        ("/v1/jobs/{job_id}/evaluations", "get"),
        ("/v1/classify", "post"),
        ("/v1/models", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    upload = paths["/v1/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert "application/problem+json" in paths["/v1/jobs"]["post"]["responses"]["422"]["content"]
    job_schema = doc["components"]["schemas"]["JobCreate"]
    assert {"dataset_id", "method", "hyperparameters", "eval_dataset_ids"} <= set(job_schema["properties"])
    # Every error answer is documented as what the API sends: a problem document, never application/json.
    for path, item in paths.items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (path, method, status)
    assert paths["/v1/models"]["get"]["responses"]["401"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    # The intro's numbered steps are a Markdown list: one item a line (Swagger UI ran them into one item).
    steps = [line for line in doc["info"]["description"].splitlines() if line[:1].isdigit()]
    assert [s[:3] for s in steps] == ["1. ", "2. ", "3. ", "4. ", "5. "], steps


def test_validation_errors_are_plain_words_about_the_fields_as_sent(client: TestClient) -> None:
    """No pydantic wording ("Value error, ...", "Input should be", "Field required") and no location prefix or
    union tag in a field's path: the console shows these next to the field, the CLI prints them."""
    cases = [
        ({"dataset_id": "ds_x", "templates": ["a picture"]}, "templates", "must contain exactly one '{}'"),
        ({"dataset_id": "ds_x", "method": {"type": "saft", "ratio": 2}}, "method.ratio", "must be less than 1"),
        ({"method": {"type": "full"}}, "dataset_id", "is required"),
        ({"dataset_id": "ds_x", "hyperparameters": {"epochs": "x"}}, "hyperparameters.epochs",
         "must be a whole number"),
        ({"dataset_id": "ds_x", "hyperparameters": {"lr": 1}}, "hyperparameters.lr", "is not a field of this request"),
        ({"dataset_id": "ds_x", "method": {"type": "sparse"}}, "method.type", "must be one of 'saft', 'full', not 'sparse'"),
    ]
    for body, field, words in cases:
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        problem = r.json()
        first = problem["errors"][0]
        assert first["field"] == field and words in first["msg"], (body, first)
        assert problem["detail"].startswith(f"{field}: {first['msg']}"), problem["detail"]
        assert first["loc"][0] == "body"  # pydantic's own location stays, for programs
        for pydantic_words in ("Value error", "Input should", "Field required", "Extra inputs", "Input tag", "body."):
            assert pydantic_words not in problem["detail"], problem["detail"]
    r = client.get("/v1/jobs", params={"limit": 0})  # a query parameter: named as such, in the same words
    assert r.json()["errors"][0]["field"] == "limit" and r.json()["detail"].startswith("limit: must be greater")


def test_a_job_the_queue_cannot_take_stays_queued_and_says_so(client: TestClient, tmp_path: Path) -> None:
    """The row first, then the message: the reaper sends it once the queue is back (see test_liveness)."""
    from saft_worlds.shapes import render_shapes

    data = zip_dir(render_shapes(tmp_path / "s", per_class=2))
    ds = client.post("/v1/datasets", data={"name": "s"}, files={"file": ("s.zip", data)})
    assert ds.status_code == 201, ds.text
    r = client.post("/v1/jobs", json={"dataset_id": ds.json()["id"], "hyperparameters": {"epochs": 1}})
    assert r.status_code == 201 and r.json()["status"] == "queued"
    listed = client.get("/v1/jobs").json()["data"]
    assert len(listed) == 1 and listed[0]["status"] == "queued"
    events = client.get(f"/v1/jobs/{r.json()['id']}/events").json()["data"]
    assert events[-1]["level"] == "warning" and "queue is unavailable" in events[-1]["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("failed")


def test_a_streamed_body_over_the_limit_is_cut_off(client: TestClient, settings: Settings) -> None:
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: the size is only known while reading
        yield head
        for _ in range(50):
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/v1/datasets", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "request_too_large"
    assert list((settings.resolved_data_dir / "datasets").iterdir()) == []


def test_models_lists_the_default_first(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["default"] == "saft-tiny"
    assert body["data"][0]["name"] == "saft-tiny" and body["data"][0]["local"] is True
    assert len(body["data"]) > 1
    # Which run offline and which would download (none of open_clip's weights are cached on a test machine).
    models = {m["name"]: m for m in body["data"]}
    tiny, vit = models["saft-tiny"], models["ViT-B-16"]
    assert (tiny["default_pretrained"], tiny["available_offline"]) == ("world", True)
    assert vit["available_offline"] is False and vit["default_pretrained"] in vit["pretrained"] and "openai" in vit["pretrained"]
    assert body["weights_files"] == []  # no models folder


def test_models_lists_the_weights_files_of_the_models_folder(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    (models_dir / "team").mkdir(parents=True)
    for name in ("b.safetensors", "team/a.pt", "README.md", ".hidden.safetensors"):
        (models_dir / name).write_bytes(b"x")
    settings = Settings(data_dir=tmp_path, models_dir=models_dir, broker_url="redis://127.0.0.1:9/0")
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        _, key = keys.create_key(session, tenant_name="t")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/models").json()["weights_files"] == ["b.safetensors", "team/a.pt"]


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.put("/v1/jobs")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_serve_restart_requeues_orphaned_running_jobs_to_resume(settings: Settings) -> None:
    with db.session_scope(settings) as s:
        tenant = keys.get_or_create_tenant(s, "t")
        running = jobs.create(s, tenant_id=tenant.id, dataset_id=None, spec={})
        queued = jobs.create(s, tenant_id=tenant.id, dataset_id=None, spec={})
        s.flush()
        jobs.claim(s, running.id, worker="gone")
    with db.session_scope(settings) as s:
        assert set(jobs.recover_after_restart(s, max_attempts=3)) == {queued.id, running.id}
    with db.session_scope(settings) as s:
        job = s.get(jobs.Job, running.id)
        assert job is not None and job.status == "queued" and job.attempts == 1
        jobs.claim(s, running.id, worker="again")  # attempt 2 ... and 3
    for _ in range(2):
        with db.session_scope(settings) as s:
            jobs.recover_after_restart(s, max_attempts=3)
            jobs.claim(s, running.id, worker="again")
    with db.session_scope(settings) as s:
        jobs.recover_after_restart(s, max_attempts=3)
        job = s.get(jobs.Job, running.id)
        assert job is not None and job.status == "failed" and job.error_code == "worker_lost"


def test_datasets_list_pages_newest_first_and_refuses_a_forged_cursor(client: TestClient, tmp_path: Path) -> None:
    from saft_worlds.shapes import render_shapes

    data = zip_dir(render_shapes(tmp_path / "s", per_class=1))
    made = [client.post("/v1/datasets", data={"name": f"d{i}"}, files={"file": ("s.zip", data)}).json()["id"]
            for i in range(3)]
    seen, cursor = [], None
    while True:
        page = client.get("/v1/datasets", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["data"]) <= 2
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    bad = client.get("/v1/datasets", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
