"""Multipart, resumable uploads over HTTP on both stores: parts in any order, in parallel and twice; every
refusal answers a stable code and leaves no file or row behind; expiry and the reaper; Idempotency-Key."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from tests.fixtures.stack import Stack, stack_settings, stored_datasets, wait_until, zip_dir

pytestmark = pytest.mark.service


def upload_files(stack: Stack, upload_id: str) -> list[str]:
    folder = stack.data_dir / "uploads" / upload_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def start(c: httpx.Client, data: bytes, *, sha256: str | None = "auto", name: str = "shapes.zip") -> dict:
    body = {"filename": name, "bytes": len(data)}
    if sha256 is not None:
        body["sha256"] = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    r = c.post("/v1/uploads", json=body)
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["parts_total"] == -(-len(data) // up["part_size"]) > 1
    return up


def part(data: bytes, up: dict, n: int) -> bytes:
    return data[(n - 1) * up["part_size"] : n * up["part_size"]]


def put(c: httpx.Client, up: dict, n: int, body: bytes, **headers: str) -> httpx.Response:
    return c.put(f"/v1/uploads/{up['id']}/parts/{n}", content=body,
                 headers={"Content-Type": "application/octet-stream", **headers})


def send_all(c: httpx.Client, data: bytes, up: dict) -> None:
    for n in range(1, up["parts_total"] + 1):
        assert put(c, up, n, part(data, up, n)).status_code == 200


def test_parts_in_any_order_in_parallel_and_twice(stack: Stack, shapes_dir: Path) -> None:
    data = zip_dir(shapes_dir, wrap="shapes")
    with stack.client() as c:
        up = start(c, data)
        numbers = list(range(up["parts_total"], 0, -1))  # last first
        with ThreadPoolExecutor(4) as pool:  # parallel, each part's checksum sent (two header forms)
            def send(n: int) -> httpx.Response:
                body = part(data, up, n)
                if n % 2:
                    return put(c, up, n, body, **{"X-Checksum-SHA256": hashlib.sha256(body).hexdigest()})
                digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
                return put(c, up, n, body, **{"Content-Digest": f"sha-256=:{digest}:"})

            answers = list(pool.map(send, numbers))
        assert [r.status_code for r in answers] == [200] * len(numbers), [r.text for r in answers]
        again = put(c, up, 2, part(data, up, 2))  # a part sent twice is stored once
        assert again.status_code == 200
        assert again.json() == {"number": 2, "size": up["part_size"],
                                "sha256": hashlib.sha256(part(data, up, 2)).hexdigest()}
        listed = c.get(f"/v1/uploads/{up['id']}").json()
        assert [p["number"] for p in listed["parts"]] == list(range(1, up["parts_total"] + 1))
        assert listed["bytes_received"] == len(data)
        assert upload_files(stack, up["id"]) == sorted(f"{n}.part" for n in range(1, up["parts_total"] + 1))
        assert up["id"] in {u["id"] for u in c.get("/v1/uploads").json()["data"]}

        r = c.post(f"/v1/uploads/{up['id']}/complete", json={"name": "multipart shapes"})
        assert r.status_code == 201, r.text
        ds = r.json()
        assert (ds["name"], ds["num_images"], ds["classes"], ds["external"]) == (
            "multipart shapes", 18, ["blue_square", "green_triangle", "red_circle"], False)
        # The same answer as a single upload of the same archive.
        single = c.post("/v1/datasets", files={"file": ("s.zip", data)}, data={"name": "single"}).json()
        assert {k: ds[k] for k in ("num_images", "classes", "counts", "size_bytes")} == {
            k: single[k] for k in ("num_images", "classes", "counts", "size_bytes")}
        # The upload is gone, with its files.
        assert c.get(f"/v1/uploads/{up['id']}").status_code == 404
        assert upload_files(stack, up["id"]) == []
        assert c.get(f"/v1/datasets/{ds['id']}").status_code == 200


def test_part_refusals_leave_nothing(stack: Stack, shapes_dir: Path) -> None:
    data = zip_dir(shapes_dir)
    with stack.client() as c:
        up = start(c, data)
        first, last = part(data, up, 1), part(data, up, up["parts_total"])
        cases = [
            (0, first, {}, 422, "part_out_of_range"),
            (up["parts_total"] + 1, last, {}, 422, "part_out_of_range"),
            (1, first + b"x", {}, 413, "part_too_large"),
            (1, first[:-1], {}, 422, "part_size_mismatch"),
            (up["parts_total"], last + b"x", {}, 413, "part_too_large"),
            (1, first, {"X-Checksum-SHA256": "0" * 64}, 422, "checksum_mismatch"),
            (1, first, {"X-Checksum-SHA256": "not hex"}, 422, "invalid_checksum_header"),
        ]
        for n, body, headers, status, code in cases:
            r = put(c, up, n, body, **headers)
            assert (r.status_code, r.json()["code"]) == (status, code), (n, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        # A body streamed without a length, one byte too long, is cut off as well.
        r = c.put(f"/v1/uploads/{up['id']}/parts/1", content=iter([first, b"x"]))
        assert (r.status_code, r.json()["code"]) == (413, "part_too_large")
        assert c.get(f"/v1/uploads/{up['id']}").json()["parts"] == []
        assert upload_files(stack, up["id"]) == []  # no part, no temporary file

        # Completing with parts missing names them.
        assert put(c, up, 1, first).status_code == 200
        r = c.post(f"/v1/uploads/{up['id']}/complete", json={"name": "x"})
        assert (r.status_code, r.json()["code"]) == (409, "upload_incomplete")
        assert r.json()["missing_parts"] == list(range(2, up["parts_total"] + 1))

        # Another tenant sees none of it.
        with stack.client("beta") as other:
            for method, path, kw in [
                ("GET", "", {}), ("PUT", "/parts/1", {"content": first}),
                ("POST", "/complete", {"json": {"name": "x"}}), ("DELETE", "", {}),
            ]:
                r = other.request(method, f"/v1/uploads/{up['id']}{path}", **kw)
                assert (r.status_code, r.json()["code"]) == (404, "upload_not_found"), (method, path, r.text)
        assert c.get(f"/v1/uploads/{up['id']}").json()["parts"][0]["number"] == 1

        # Abort: the parts and the row go.
        assert c.delete(f"/v1/uploads/{up['id']}").status_code == 204
        assert c.get(f"/v1/uploads/{up['id']}").status_code == 404
        assert upload_files(stack, up["id"]) == []


def test_whole_file_checksum_and_bad_archives(stack: Stack, shapes_dir: Path) -> None:
    data = zip_dir(shapes_dir)
    with stack.client() as c:
        before = stored_datasets(stack)
        # A wrong declared SHA-256: refused, the upload kept (its parts' hashes tell what to resend).
        up = start(c, data, sha256="ab" * 32)
        send_all(c, data, up)
        r = c.post(f"/v1/uploads/{up['id']}/complete", json={"name": "x"})
        assert (r.status_code, r.json()["code"]) == (422, "checksum_mismatch")
        kept = c.get(f"/v1/uploads/{up['id']}").json()
        assert kept["status"] == "pending" and len(kept["parts"]) == up["parts_total"]
        assert stored_datasets(stack) == before
        c.delete(f"/v1/uploads/{up['id']}")

        # A corrupted part (the server cannot know without a checksum): the archive check refuses, the
        # upload is deleted, nothing is stored.
        up = start(c, data, sha256=None)
        send_all(c, data, up)
        assert put(c, up, 1, b"\0" * up["part_size"]).status_code == 200
        r = c.post(f"/v1/uploads/{up['id']}/complete", json={"name": "x"})
        assert r.status_code in (415, 422), r.text
        assert r.json()["code"] in ("unsupported_archive", "corrupt_archive", "invalid_dataset")
        assert "the upload was deleted" in r.json()["detail"]
        assert c.get(f"/v1/uploads/{up['id']}").status_code == 404
        assert upload_files(stack, up["id"]) == []
        assert stored_datasets(stack) == before


def test_expired_uploads_answer_410_and_are_reaped(stack: Stack, shapes_dir: Path) -> None:
    from saft_service import db
    from saft_service.reaper import reap_once
    from saft_service.tables import Upload, utcnow

    data = zip_dir(shapes_dir)
    settings = stack_settings(stack)
    with stack.client() as c:
        asked, reaped, stuck = start(c, data), start(c, data), start(c, data)
        for up in (asked, reaped):
            assert put(c, up, 1, part(data, up, 1)).status_code == 200
        with db.session_scope(settings) as s:
            s.execute(update(Upload).where(Upload.id.in_([asked["id"], reaped["id"]]))
                      .values(expires_at=utcnow() - timedelta(seconds=1)))
            # completing, by a process that died: no beat for ten minutes
            s.execute(update(Upload).where(Upload.id == stuck["id"])
                      .values(status="completing", updated_at=utcnow() - timedelta(minutes=10)))
        r = c.post(f"/v1/uploads/{stuck['id']}/complete", json={"name": "x"})
        assert (r.status_code, r.json()["code"]) == (409, "upload_completing")
        r = put(c, asked, 2, part(data, asked, 2))
        assert (r.status_code, r.json()["code"]) == (410, "upload_expired")
        assert upload_files(stack, asked["id"]) == []
        assert c.get(f"/v1/uploads/{asked['id']}").status_code == 404
        assert reaped["id"] not in {u["id"] for u in c.get("/v1/uploads").json()["data"]}
        report = reap_once(settings, judge_heartbeats=False)
        assert reaped["id"] in report.uploads_removed and stuck["id"] not in report.uploads_removed
        assert c.get(f"/v1/uploads/{stuck['id']}").json()["status"] == "pending"
        assert c.delete(f"/v1/uploads/{stuck['id']}").status_code == 204
        assert upload_files(stack, reaped["id"]) == []
        assert c.get(f"/v1/uploads/{reaped['id']}").status_code == 404


def test_idempotency_key_on_create_and_complete(stack: Stack, shapes_dir: Path) -> None:
    data = zip_dir(shapes_dir)
    body = {"filename": "s.zip", "bytes": len(data)}
    with stack.client() as c:
        key = secrets.token_hex(8)
        first = c.post("/v1/uploads", json=body, headers={"Idempotency-Key": key})
        again = c.post("/v1/uploads", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
        up = first.json()
        send_all(c, data, up)
        done_key = secrets.token_hex(8)
        path = f"/v1/uploads/{up['id']}/complete"
        done = c.post(path, json={"name": "once"}, headers={"Idempotency-Key": done_key})
        replay = c.post(path, json={"name": "once"}, headers={"Idempotency-Key": done_key})
        assert done.status_code == replay.status_code == 201
        assert done.json()["id"] == replay.json()["id"]
        named = [d for d in c.get("/v1/datasets", params={"limit": 100}).json()["data"] if d["name"] == "once"]
        assert len(named) == 1
        # The same key for completing another upload is a reuse, not a replay.
        other = start(c, data)
        r = c.post(f"/v1/uploads/{other['id']}/complete", json={"name": "once"}, headers={"Idempotency-Key": done_key})
        assert (r.status_code, r.json()["code"]) == (422, "idempotency_key_reused")
        c.delete(f"/v1/uploads/{other['id']}")


def test_a_part_arriving_while_its_upload_is_aborted_leaves_nothing(stack: Stack, shapes_dir: Path) -> None:
    data = zip_dir(shapes_dir)
    with stack.client() as c, stack.client() as other_connection:
        up = start(c, data)
        body = part(data, up, 1)
        aborted = threading.Event()

        def slow_body() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            aborted.wait(30)
            yield body[len(body) // 2 :]

        def abort() -> None:
            # The server opens the part's file just before it reads the body: from then on the part is in flight
            # (its second half waits for the abort).
            assert wait_until(lambda: upload_files(stack, up["id"]), timeout=30, interval=0.02), "no part arrived"
            assert other_connection.delete(f"/v1/uploads/{up['id']}").status_code == 204
            aborted.set()

        threading.Thread(target=abort).start()
        r = c.put(f"/v1/uploads/{up['id']}/parts/1", content=slow_body(),
                  headers={"Content-Length": str(len(body)), "Content-Type": "application/octet-stream"})
        assert (r.status_code, r.json()["code"]) == (404, "upload_not_found"), r.text
        assert upload_files(stack, up["id"]) == []
        assert c.get(f"/v1/uploads/{up['id']}").status_code == 404
