"""SAFT_LOG_FORMAT=json: one JSON object per record, with the ids of the request or job where known."""

from __future__ import annotations

import json
import logging
import sys
import threading

from saft_service.logs import JsonFormatter, add_to_context, log_context, start_context


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("worker.runner", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_record_is_one_json_line_with_the_context_ids() -> None:
    fmt = JsonFormatter()
    with log_context(job_id="job_1"):
        add_to_context(tenant="acme")
        line = fmt.format(record("job %s: %s\nsecond line", "job_1", "stage training"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "worker.runner"
    assert out["message"] == "job job_1: stage training\nsecond line"
    assert out["job_id"] == "job_1" and out["tenant"] == "acme" and "request_id" not in out
    assert out["time"].endswith("Z") and out["time"][10] == "T"
    # outside the block the ids are gone
    assert {"job_id", "tenant", "request_id"}.isdisjoint(json.loads(fmt.format(record("after"))))


def test_the_traceback_is_a_field() -> None:
    out = json.loads(JsonFormatter().format(record("crashed", exc=True)))
    assert out["message"] == "crashed"
    assert "ValueError: boom" in out["exception"] and "Traceback" in out["exception"]


def test_what_a_thread_adds_is_seen_by_the_request() -> None:
    """A sync dependency runs in a worker thread with a copy of the request's context; the tenant it adds must
    reach the request's later lines (the access log)."""
    import contextvars

    fmt = JsonFormatter()

    def in_request() -> str:
        start_context(request_id="req-1")
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(add_to_context,), kwargs={"tenant": "acme"})
        t.start()
        t.join()
        return fmt.format(record("GET /v1/jobs 200"))

    out = json.loads(contextvars.copy_context().run(in_request))
    assert out["request_id"] == "req-1" and out["tenant"] == "acme"
