"""Logging setup shared by the API, the worker and the CLI (stderr, one line per record).

``SAFT_LOG_FORMAT=text`` (the default) writes plain lines; ``json`` writes one JSON object per line:

    {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "worker.runner", "message": "...",
     "request_id": "...", "tenant": "acme", "job_id": "job_..."}

``request_id``, ``tenant`` and ``job_id`` appear where known. They come from a context variable: the API sets
it per request (``api/observability.py``: the request id; authentication adds the tenant, a job route the job
id) and the worker per job (``worker/runner.py``). The context is one mutable object per request, so what a
dependency running in a worker thread adds is seen by the rest of the request too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace
from typing import Literal

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]


@dataclass
class LogContext:
    """What the current request or job is, for the log lines written on its behalf."""

    request_id: str | None = None
    tenant: str | None = None
    job_id: str | None = None


_context: ContextVar[LogContext | None] = ContextVar("saft_log_context", default=None)


def start_context(**values: str | None) -> LogContext:
    """Begin a new context here (a request, a job), replacing any outer one for the rest of this task."""
    ctx = LogContext(**values)
    _context.set(ctx)
    return ctx


def add_to_context(**values: str | None) -> None:
    """Fill in fields of the current context (seen by the whole request, also outside this thread); a no-op
    outside any context."""
    ctx = _context.get()
    if ctx is not None:
        for name, value in values.items():
            setattr(ctx, name, value)


@contextmanager
def log_context(**values: str | None) -> Iterator[LogContext]:
    """The current context with ``values`` on top, for the block (the outer one comes back after it)."""
    outer = _context.get()
    ctx = replace(outer, **values) if outer is not None else LogContext(**values)
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the context's ids where
    known, and ``exception`` (the traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = _context.get()
        if ctx is not None:
            out.update({f.name: v for f in fields(ctx) if (v := getattr(ctx, f.name)) is not None})
        out["process"] = record.processName
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def make_formatter(fmt: LogFormat = "text") -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT)


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt``; reuses a handler someone already installed (no duplicate lines)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(make_formatter(fmt))
    root.setLevel(level.upper())
