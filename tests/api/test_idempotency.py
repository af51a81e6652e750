"""Idempotency-Key on POST /v1/jobs and POST /v1/datasets: a retry gets the first answer and creates nothing."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from saft_service import db, keys
from saft_service import idempotency_keys as idempotency
from saft_service.settings import Settings
from saft_service.tables import IdempotencyKey, utcnow
from tests.fixtures.stack import (
    Stack,
    stack_settings,
    stored_datasets,
    wait_for_job,
    wait_until,
    zip_dir,
)

pytestmark = pytest.mark.service

HEADER = "Idempotency-Key"


def new_key() -> str:
    return f"test-{secrets.token_hex(8)}"


def upload(c: httpx.Client, archive: bytes, name: str, key: str | None) -> httpx.Response:
    headers = {HEADER: key} if key else {}
    return c.post("/v1/datasets", data={"name": name}, files={"file": ("s.zip", archive)}, headers=headers)


def count_datasets(c: httpx.Client) -> int:
    return len(c.get("/v1/datasets", params={"limit": 100}).json()["data"])


def count_jobs(c: httpx.Client) -> int:
    return len(c.get("/v1/jobs", params={"limit": 100}).json()["data"])


def key_state(settings: Settings, key: str) -> str | None:
    """The state of the stored claim of ``key`` (any tenant): None before a request claimed it."""
    with db.session_scope(settings) as s:
        return s.scalar(select(IdempotencyKey.state).where(IdempotencyKey.key == key))


def test_retried_upload_returns_the_first_answer_and_stores_one_dataset(
    stack: Stack, shapes_dir: Path
) -> None:
    archive, key = zip_dir(shapes_dir), new_key()
    with stack.client() as c:
        before, folders, jobs_before = count_datasets(c), stored_datasets(stack), count_jobs(c)
        first = upload(c, archive, "idem", key)
        again = upload(c, archive, "idem", key)  # a new multipart boundary, the same content
        assert first.status_code == 201, first.text
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
        assert count_datasets(c) == before + 1
        assert stored_datasets(stack) == folders | {first.json()["id"]}
        # The same key with another body, or on another endpoint: 422, nothing stored.
        other = upload(c, archive, "another name", key)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
        r = c.post("/v1/jobs", json={"dataset_id": first.json()["id"]}, headers={HEADER: key})
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused", r.text
        assert count_datasets(c) == before + 1 and count_jobs(c) == jobs_before
        # Another tenant's keys are its own.
        with stack.client("beta") as b:
            theirs = upload(b, archive, "idem", key)
            assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
            assert "idempotent-replayed" not in theirs.headers


def test_retried_job_submission_creates_one_job_and_failures_are_not_kept(
    stack: Stack, shapes_dir: Path
) -> None:
    with stack.client() as c:
        ds = upload(c, zip_dir(shapes_dir), "idem-jobs", None).json()["id"]
        body = {"dataset_id": ds, "hyperparameters": {"epochs": 500, "batch_size": 2}}
        before, key = count_jobs(c), new_key()
        first = c.post("/v1/jobs", json=body, headers={HEADER: key})
        assert first.status_code == 201, first.text
        try:
            again = c.post("/v1/jobs", json=body, headers={HEADER: key})
            assert again.status_code == 201 and again.json() == first.json()  # the first answer, as it was
            assert again.headers["idempotent-replayed"] == "true"
            assert count_jobs(c) == before + 1
            changed = c.post("/v1/jobs", json={**body, "seed": 1}, headers={HEADER: key})
            assert changed.status_code == 422 and changed.json()["code"] == "idempotency_key_reused"
        finally:
            c.post(f"/v1/jobs/{first.json()['id']}/cancel")
        # A refused request keeps nothing: the same key then works for a good request.
        key2 = new_key()
        bad = c.post("/v1/jobs", json={"dataset_id": "ds_missing"}, headers={HEADER: key2})
        assert bad.status_code == 422 and bad.json()["code"] == "dataset_not_found"
        good = c.post("/v1/jobs", json=body, headers={HEADER: key2})
        assert good.status_code == 201, good.text
        c.post(f"/v1/jobs/{good.json()['id']}/cancel")
        assert count_jobs(c) == before + 2
        for job in (first.json(), good.json()):
            assert wait_for_job(c, job["id"], until={"cancelled", "failed", "succeeded"}, timeout=120)
        bad_key = c.post("/v1/jobs", json=body, headers={HEADER: "has space"})
        assert bad_key.status_code == 422 and bad_key.json()["code"] == "invalid_idempotency_key"
        assert count_jobs(c) == before + 2


def test_a_retry_while_the_first_upload_is_in_flight_is_409_and_one_dataset_is_stored(
    pg_stack: Stack, shapes_dir: Path
) -> None:
    """The first upload's body is held back half-way, so the retry deterministically meets it in flight."""
    key = new_key()
    with pg_stack.client() as c:
        before = count_datasets(c)
        request = c.build_request(
            "POST", "/v1/datasets", data={"name": "slow"}, files={"file": ("s.zip", zip_dir(shapes_dir))}
        )
        payload = request.read()
        go_on, answers = threading.Event(), {}

        def body() -> Iterator[bytes]:
            yield payload[: len(payload) // 2]
            assert go_on.wait(60)
            yield payload[len(payload) // 2 :]

        headers = {HEADER: key, "content-type": request.headers["content-type"]}

        def send_first() -> None:
            with pg_stack.client() as first:
                answers["first"] = first.post("/v1/datasets", content=body(), headers=headers)

        sender = threading.Thread(target=send_first)
        sender.start()
        # The first request claims its key before it reads the body, so its claim is in the store while the body
        # waits on go_on: the retry is sent once that claim is seen.
        settings = stack_settings(pg_stack)
        assert wait_until(lambda: key_state(settings, key) == "processing", timeout=60, interval=0.05), (
            f"the first request never claimed its key\n{pg_stack.logs()}"
        )
        retry = upload(c, zip_dir(shapes_dir), "slow", key)
        go_on.set()
        sender.join(60)
        assert retry.status_code == 409 and retry.json()["code"] == "idempotency_key_in_use", retry.text
        assert retry.headers["retry-after"] == "1"
        assert answers["first"].status_code == 201, answers["first"].text
        replay = upload(c, zip_dir(shapes_dir), "slow", key)
        assert replay.status_code == 201 and replay.json() == answers["first"].json()
        assert count_datasets(c) == before + 1


def test_concurrent_retries_of_a_job_submission_create_one_job(idle_api: Stack, shapes_dir: Path) -> None:
    idle = idle_api
    with idle.client() as c:
        ds = upload(c, zip_dir(shapes_dir), "race", None).json()["id"]
        before, key = count_jobs(c), new_key()
        answers: list[httpx.Response] = []

        def submit() -> None:
            with idle.client() as mine:
                answers.append(mine.post("/v1/jobs", json={"dataset_id": ds}, headers={HEADER: key}))

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in answers)
        assert len(answers) == 8 and set(codes) <= {201, 409}, [r.text for r in answers]
        assert len({r.json()["id"] for r in answers if r.status_code == 201}) == 1
        assert all(r.json()["code"] == "idempotency_key_in_use" for r in answers if r.status_code == 409)
        assert count_jobs(c) == before + 1
        job = next(r.json() for r in answers if r.status_code == 201)
        assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_openapi_documents_the_header_on_both_create_routes(tmp_path: Path) -> None:
    from api.main import create_app

    doc = create_app(Settings(data_dir=tmp_path)).openapi()
    for path in ("/v1/jobs", "/v1/datasets"):
        op = doc["paths"][path]["post"]
        (param,) = [p for p in op["parameters"] if p["name"] == HEADER]
        assert param["in"] == "header" and not param["required"] and "retry" in param["description"]
        assert "409" in op["responses"]
    assert not any(
        p["name"] == HEADER for p in doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["parameters"]
    )


# --- the store on its own (SQLite): retention, purge and take-over of a lost request -----------------------


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[tuple[object, str]]:
    settings = Settings(data_dir=tmp_path)
    db.upgrade(settings)
    f = db.session_factory(settings)
    with f() as s:
        tenant = keys.get_or_create_tenant(s, "t")
        s.commit()
        yield f, tenant.id
    db.get_engine(settings).dispose()


def test_keys_expire_are_purged_and_a_lost_claim_is_taken_over(factory: tuple[object, str]) -> None:
    f, tenant = factory
    day, stale = timedelta(hours=24), timedelta(minutes=10)
    t0 = utcnow()

    def claim(key: str, at: timedelta) -> idempotency.Outcome:
        return idempotency.claim(
            f, tenant_id=tenant, key=key, endpoint="POST /v1/jobs", ttl=day, stale_after=stale, now=t0 + at
        )

    done = claim("done", timedelta())
    assert isinstance(done, idempotency.Claimed)
    assert idempotency.complete(
        f,
        tenant_id=tenant,
        key="done",
        token=done.token,
        fingerprint="ab",
        status=201,
        content_type="application/json",
        body="{}",
    )
    assert isinstance(claim("done", timedelta(hours=23)), idempotency.Replay)  # kept for the day
    assert isinstance(claim("busy", timedelta()), idempotency.Claimed)
    assert isinstance(claim("busy", timedelta(minutes=9)), idempotency.InUse)
    taken = claim("busy", timedelta(minutes=11))  # its request was lost: the retry runs
    assert isinstance(taken, idempotency.Claimed)
    assert idempotency.count(f, tenant) == 2
    assert (
        idempotency.purge_expired(f, now=t0 + timedelta(hours=24, seconds=1)) == 1
    )  # "done"; "busy" is newer
    assert idempotency.count(f, tenant) == 1
    assert isinstance(claim("done", timedelta(hours=25)), idempotency.Claimed)  # a new request now


# --- a crash between the commit of what a request created and the storing of its answer --------------------


class Crash(Exception):
    """The API process dies here: nothing after this point of the request runs."""


def test_a_retry_after_a_crash_before_the_answer_was_stored_gets_the_first_answer(
    migrated_settings: Settings, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dataset, the job and the multipart upload commit with their key's answer, so a request cut off after
    that commit (here: where the exact answer would be stored) is replayed by its retry, not run again into a
    second one."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = migrated_settings
    with db.session_scope(settings) as session:
        _, api_key = keys.create_key(session, tenant_name="crash")

    def crash(*args: object, **kwargs: object) -> bool:
        raise Crash

    archive = zip_dir(shapes_dir)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {api_key}"}) as c:
        made: dict[str, str] = {}

        def send(path: str, key: str) -> httpx.Response:
            if path == "/v1/datasets":
                return c.post(path, data={"name": "crash"}, files={"file": ("s.zip", archive)}, headers={HEADER: key})
            if path == "/v1/uploads":
                return c.post(path, json={"filename": "s.zip", "bytes": len(archive)}, headers={HEADER: key})
            return c.post(path, json={"dataset_id": made["/v1/datasets"]}, headers={HEADER: key})

        for path in ("/v1/datasets", "/v1/jobs", "/v1/uploads"):
            key = new_key()
            with monkeypatch.context() as m:
                m.setattr(idempotency, "complete", crash)
                with pytest.raises(Crash):
                    send(path, key)
            rows = c.get(path).json()["data"]
            assert len(rows) == 1  # the first request did create it
            retry = send(path, key)
            assert retry.status_code == 201, retry.text
            assert retry.headers.get("idempotent-replayed") == "true"
            assert retry.json()["id"] == rows[0]["id"]
            assert len(c.get(path).json()["data"]) == 1  # and nothing more
            made[path] = rows[0]["id"]
    db.get_engine(settings).dispose()
