"""saft_client without a server: the retry policy (429 with Retry-After, 503, connection errors, one
Idempotency-Key per call), the folder zip streamed on the fly, the SSE decoder. The service cannot be made to
answer 429/503 or refuse connections on demand, so these use httpx.MockTransport; the same paths run against
the real service in tests/client/test_client.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from saft_client import (
    ChecksumMismatch,
    Client,
    ConnectionFailed,
    RateLimited,
    RetryPolicy,
    SaftClientError,
    Unavailable,
)
from saft_client._base import SSEDecoder, job_body, parse_retry_after
from saft_client._transfer import ReadableChunks, folder_files, zip_chunks
from saft_client.models import CheckpointInfo, Evaluation, Job, JobEvent

JOB = {"id": "job_1"}


def _problem(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"type": f"urn:saft:problem:{code}", "title": "x", "status": status, "detail": code, "code": code}
    return httpx.Response(status, json=body, headers=headers)


def _client(answers: list, seen: list[httpx.Request], **retry: float) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer  # a function answers as it likes

    policy = RetryPolicy(**{"backoff": 0.01, **retry})
    return Client("http://saft.test", "k", transport=httpx.MockTransport(handler), retry=policy)


def test_retries_honour_retry_after_and_keep_one_idempotency_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    answers = [_problem(429, "quota_exceeded", "1"), _problem(503, "database_unavailable"),
               httpx.ConnectError("refused"), httpx.Response(201, json=JOB)]
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # the client's waits, recorded instead of slept
    with _client(answers, seen) as c:
        r = c.request("POST", "/v1/jobs", json={"dataset_id": "ds"})
    assert r.json() == JOB and len(seen) == 4
    # The server's Retry-After (1 s) first, not the 10 ms backoff; then the backoff (at most 20 ms, 40 ms).
    assert len(waits) == 3 and waits[0] == 1.0 and waits[1] <= 0.02 and waits[2] <= 0.04, waits
    keys = {req.headers["Idempotency-Key"] for req in seen}
    assert len(keys) == 1 and len(keys.pop()) == 32
    with _client([httpx.Response(201, json=JOB)] * 2, seen := []) as c:  # each call its own key
        c.request("POST", "/v1/jobs", json={})
        c.request("POST", "/v1/jobs", json={})
    assert seen[0].headers["Idempotency-Key"] != seen[1].headers["Idempotency-Key"]
    assert "Idempotency-Key" not in _get_headers()


def _get_headers() -> httpx.Headers:
    seen: list[httpx.Request] = []
    with _client([httpx.Response(200, json=JOB)], seen) as c:
        c.request("GET", "/v1/jobs/job_1")
    return seen[0].headers


def test_gives_up_with_the_typed_error_or_connection_failed() -> None:
    c = _client([_problem(429, "quota_exceeded", "0")] * 3, seen := [], max_retries=2)
    with c, pytest.raises(RateLimited) as e:
        c.request("POST", "/v1/jobs", json={})
    assert len(seen) == 3 and e.value.code == "quota_exceeded" and e.value.retry_after == 0
    with _client([_problem(503, "unavailable")] * 2, [], max_retries=1) as c, pytest.raises(Unavailable):
        c.request("GET", "/v1/jobs")
    with _client([httpx.ReadTimeout("slow")] * 2, [], max_retries=1) as c, pytest.raises(ConnectionFailed):
        c.request("GET", "/v1/jobs")
    # A 409 idempotency_key_in_use (the first attempt still running) is retried too; other 409s are not.
    with _client([_problem(409, "idempotency_key_in_use", "0"), httpx.Response(201, json=JOB)], seen := []) as c:
        assert c.request("POST", "/v1/jobs", json={}).status_code == 201


def test_delete_whose_answer_was_lost_is_done() -> None:
    with _client([httpx.ReadError("lost"), _problem(404, "job_not_found")], seen := []) as c:
        c.jobs.delete("job_1")  # the first attempt deleted it: the retry's 404 is not an error
    assert [r.method for r in seen] == ["DELETE", "DELETE"]


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date


def test_folder_zip_is_streamed_and_complete(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(bytes([i]) * (300_000 + i))
    (tmp_path / "classes.json").write_text(json.dumps({"a": "ant", "b": "bee"}))
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    files = folder_files(tmp_path)
    chunks = list(zip_chunks(tmp_path, files))
    assert len(chunks) > 6 and max(len(c) for c in chunks) < 600_000  # produced piecewise, never all at once
    seen: list[tuple[int, int | None]] = []
    reader = ReadableChunks(iter(chunks), lambda d, t: seen.append((d, t)), 123)
    data = b"".join(iter(lambda: reader.read(65536), b""))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert sorted(zf.namelist()) == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png", "classes.json"]
        assert zf.read("b/2.png") == bytes([2]) * 300_002
    assert seen[-1] == (len(data), 123)


def test_sse_decoder_dispatches_only_whole_events() -> None:
    d = SSEDecoder()
    assert [d.feed(x) for x in (": ping", "id: 3", "event: progress", 'data: {"a"', "data: :1}")] == [None] * 5
    msg = d.feed("")
    assert msg is not None and (msg.id, msg.event, msg.data) == ("3", "progress", '{"a"\n:1}')
    d.feed("id: 4")
    d.feed("data: {partial")  # the connection drops here: a new decoder after the reconnect
    assert SSEDecoder().feed("") is None


def test_job_body_sorts_flat_options() -> None:
    body = job_body("ds_1", ratio=0.01, epochs=2, learning_rate=0.1, validation_fraction=0.2, eval_datasets=["ds_2"])
    assert body == {
        "dataset_id": "ds_1", "method": {"type": "saft", "ratio": 0.01},
        "hyperparameters": {"epochs": 2, "learning_rate": 0.1}, "validation_fraction": 0.2,
        "eval_dataset_ids": ["ds_2"],
    }
    assert job_body("ds_1", method="full")["method"] == {"type": "full"}
    with pytest.raises(TypeError, match="lerning_rate"):
        job_body("ds_1", lerning_rate=0.1)
    with pytest.raises(SaftClientError, match="epochs"):
        job_body("ds_1", epochs="many")
    with pytest.raises(SaftClientError, match="full"):
        job_body("ds_1", method="full", ratio=0.1)


def test_job_body_puts_the_scoring_batch_in_the_method() -> None:
    """SAFT's scoring batch is the method's; a ``hyperparameters`` mapping that still has it (its former place)
    is sorted the same way."""
    assert job_body("ds_1", scoring_batch_size=8)["method"] == {"type": "saft", "scoring_batch_size": 8}
    assert job_body("ds_1", hyperparameters={"scoring_batch_size": 8, "epochs": 2}) == {
        "dataset_id": "ds_1", "method": {"type": "saft", "scoring_batch_size": 8}, "hyperparameters": {"epochs": 2},
    }
    with pytest.raises(SaftClientError, match="full"):
        job_body("ds_1", method="full", scoring_batch_size=8)


def _sse(*events: tuple[int, bool]) -> bytes:
    """An event stream: (event id, whether the SSE id field is sent), then `end`."""
    out = []
    for eid, with_id in events:
        data = json.dumps({"id": eid, "created_at": "2026-01-01T00:00:00Z", "kind": "message", "level": "info",
                           "message": str(eid), "data": {}})
        out.append((f"id: {eid}\n" if with_id else "") + f"event: message\ndata: {data}\n\n")
    return "".join(out).encode()


def test_stream_yields_a_late_event_once_and_resumes_after_the_largest_sse_id() -> None:
    """Event 2 is committed after 3 (the server sends it late, without an SSE id); the connection drops after
    it; the reconnect (Last-Event-ID: 3) replays 2 and 3 from a stale replica-like answer: none twice."""
    seen: list[httpx.Request] = []
    answers = [
        httpx.Response(200, content=_sse((1, True), (3, True), (2, False)), headers={"Content-Type": "text/event-stream"}),
        httpx.Response(200, content=_sse((2, False), (3, True), (4, True)) + b"event: end\ndata: {}\n\n"),
    ]
    with _client(answers, seen) as c:
        ids = [e.id for e in c.jobs.stream("job_1")]
    assert ids == [1, 3, 2, 4]
    assert "Last-Event-ID" not in seen[0].headers and seen[1].headers["Last-Event-ID"] == "3"


def test_an_older_servers_evaluations_still_parse() -> None:
    """Before the alpha frontier a server sent the two ends without their alpha: the client fills it in."""
    old = {"dataset": "validation", "dataset_name": "validation", "top1": 0.5, "top5": 1.0, "n": 6, "num_classes": 3}
    assert Evaluation.model_validate({**old, "model": "zero-shot"}).alpha == 0.0
    assert Evaluation.model_validate({**old, "model": "fine-tuned"}).alpha == 1.0
    assert Evaluation.model_validate({**old, "model": "interpolated", "alpha": 0.25}).alpha == 0.25
    assert CheckpointInfo.model_validate({"sha256": "0" * 64, "size_bytes": 1, "url": "/x"}).recommended_alpha is None


def test_an_unreached_server_fails_at_once_when_asked_and_one_that_answered_is_retried() -> None:
    """``RetryPolicy(retry_unreached=False)`` (the ``saft`` commands): nothing listening at the URL is said after
    one attempt; a server that has answered this client before is retried as usual (a restart)."""
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    with _client([refused, httpx.Response(200, json=JOB)], seen := [], retry_unreached=False) as c:
        with pytest.raises(ConnectionFailed) as e:
            c.request("GET", "/v1/jobs")
        assert len(seen) == 1 and e.value.url == "http://saft.test" and "Connection refused" in (e.value.reason or "")
        assert c.request("GET", "/v1/jobs").json() == JOB  # it answers now
    with _client([httpx.Response(200, json=JOB), refused, httpx.Response(200, json=JOB)], seen := [],
                 retry_unreached=False) as c:
        c.request("GET", "/v1/jobs")
        assert c.request("GET", "/v1/jobs").json() == JOB and len(seen) == 3  # retried after an answer
    with _client([refused, httpx.Response(200, json=JOB)], seen := []) as c:  # the default: retried
        assert c.request("GET", "/v1/jobs").json() == JOB and len(seen) == 2


def _file_answer(body: bytes, sha: str | None = None) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"X-Checksum-SHA256": sha or hashlib.sha256(body).hexdigest()})


def test_download_gets_the_normal_file_mode_and_replaces_a_file_only_when_allowed(tmp_path: Path) -> None:
    old_mask = os.umask(0o022)
    try:
        dest = tmp_path / "job_1.safetensors"
        with _client([_file_answer(b"delta")], []) as c:
            c.jobs.download_checkpoint("job_1", dest)
        assert dest.read_bytes() == b"delta" and stat.S_IMODE(dest.stat().st_mode) == 0o644  # not mkstemp's 0600
        with _client([_file_answer(b"other")], seen := []) as c, pytest.raises(FileExistsError, match="exists"):
            c.jobs.download_checkpoint("job_1", dest, overwrite=False)
        assert dest.read_bytes() == b"delta" and seen == []  # refused before anything was fetched
        # the file appears while the download runs: still not replaced, and no temporary file is left
        other = tmp_path / "other.safetensors"

        def appears(request: httpx.Request) -> httpx.Response:
            other.write_bytes(b"theirs")
            return _file_answer(b"other")

        with _client([appears], []) as c, pytest.raises(FileExistsError):
            c.jobs.download_mask("job_1", other, overwrite=False)
        assert other.read_bytes() == b"theirs"
        with _client([_file_answer(b"new"), _file_answer(b"x", sha="0" * 64)], []) as c:
            c.jobs.download_checkpoint("job_1", other)  # overwrite (the default): replaced
            assert other.read_bytes() == b"new"
            with pytest.raises(ChecksumMismatch):
                c.jobs.download_checkpoint("job_1", other)
        assert other.read_bytes() == b"new"  # a failed download leaves the file as it was
        assert sorted(p.name for p in tmp_path.iterdir()) == ["job_1.safetensors", "other.safetensors"]
    finally:
        os.umask(old_mask)


def test_an_older_servers_job_has_no_warnings_and_a_warning_event_parses() -> None:
    """A server older than training health sends no ``warnings``: the job parses with none."""
    old = {
        "id": "job_1", "status": "succeeded", "stage": None, "progress": {"stage": None, "step": 2, "total_steps": 2},
        "metrics": {}, "error": None, "dataset_id": "ds_1", "eval_dataset_ids": [], "model": "saft-tiny",
        "pretrained": "world", "method": {"type": "full"}, "hyperparameters": {}, "validation_fraction": 0.0,
        "templates": ["a photo of a {}."], "metadata": {}, "cancel_requested": False, "attempts": 1,
        "checkpoint": None, "created_at": "2026-12-01T00:00:00Z", "started_at": None, "finished_at": None,
    }
    assert Job.model_validate(old).warnings == []
    warning = {"code": "loss_at_chance", "message": "the loss ended at 1.1", "hint": "try a learning rate 10x lower"}
    job = Job.model_validate({**old, "warnings": [warning]})
    assert job.warnings[0].code == "loss_at_chance" and job.warnings[0].hint == warning["hint"]
    event = JobEvent.model_validate({"id": 9, "created_at": "2026-12-01T00:00:00Z", "kind": "warning",
                                     "level": "warning", "message": warning["message"],
                                     "data": {"code": "loss_at_chance", "hint": warning["hint"], "final_loss": 1.1}})
    assert event.kind == "warning" and event.data["code"] == "loss_at_chance"
