"""What the sync and the async client share: configuration, the retry policy, turning problem documents into
exceptions, the Server-Sent Events decoder and the request bodies. No I/O here."""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import os
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import httpx
import pydantic

from . import __version__
from .errors import APIError, SaftClientError, error_class
from .models import Dataset, Hyperparameters, Job, JobCreate, SaftMethod

ENV_URL = "SAFT_URL"
ENV_KEY = "SAFT_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Statuses worth another try: a quota (429) and an unavailable dependency (502/503/504).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A retry that arrives while the first attempt is still being processed (the server's idempotency guard).
RETRY_CODES = frozenset({"idempotency_key_in_use"})
# Completing a multipart upload answers once the whole file is checked and extracted: minutes for large ones.
COMPLETE_TIMEOUT = httpx.Timeout(120.0, read=6 * 3600.0)
RETRY_EXCEPTIONS = (httpx.TransportError,)  # connect/read/write errors, timeouts, dropped connections


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits U(0, min(max_backoff, backoff * 2**n)) seconds,
    or the server's ``Retry-After`` when it gives one (capped at ``max_retry_after``).

    ``retry_unreached=False`` gives up at once when no connection can be opened to a server that has not
    answered this client yet (nothing listens at the URL): an interactive tool pointed at the wrong port says
    so now instead of after the retries. A server that has answered once is retried as usual (a restart)."""

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 120.0
    retry_unreached: bool = True

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def gives_up(self, attempt: int, error: Exception, *, answered: bool) -> bool:
        """Whether transport ``error`` on ``attempt`` (0 for the first) ends the call (``ConnectionFailed``);
        ``answered``: whether the server has answered this client before."""
        unreached = isinstance(error, httpx.ConnectError) and not answered
        return attempt >= self.max_retries or (unreached and not self.retry_unreached)


def resolve_config(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The server URL and key: the arguments, else ``SAFT_URL`` / ``SAFT_API_KEY``, else the local default."""
    url = (base_url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
    return url, api_key or os.environ.get(ENV_KEY) or None


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"saft-client/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error answer (or one made up from its status and text)."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, dict) and "code" in body:
        return body
    text = ""
    with contextlib.suppress(httpx.ResponseNotRead):
        text = response.text[:500]
    return {
        "status": response.status_code,
        "code": f"http_{response.status_code}",
        "detail": text or response.reason_phrase,
    }


def api_error(response: httpx.Response) -> APIError:
    """The exception for an error answer: class by status, fields from the problem document."""
    p = problem_of(response)
    cls = error_class(response.status_code)
    return cls(
        response.status_code,
        str(p.get("code", "")),
        str(p.get("detail", "")),
        errors=p.get("errors") if isinstance(p.get("errors"), list) else None,
        problem=p,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def should_retry(response: httpx.Response) -> bool:
    if response.status_code in RETRY_STATUSES:
        return True
    if response.status_code == 409:
        return problem_of(response).get("code") in RETRY_CODES
    return False


# --- Server-Sent Events -----------------------------------------------------------------------------------


@dataclass
class SSEMessage:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Decodes ``text/event-stream`` lines into messages. A message is dispatched only at its blank line, so a
    connection cut mid-message yields nothing half-read (it is sent again after the reconnect)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        if line == "":
            if not self._data and not self._event:
                return None
            msg = SSEMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return msg
        if line.startswith(":"):
            return None  # a comment (keep-alive ping)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


# --- request bodies ---------------------------------------------------------------------------------------

_METHOD_FIELDS = set(SaftMethod.model_fields) - {"type"}
_HYPER_FIELDS = set(Hyperparameters.model_fields)


def id_of(obj: str | Any) -> str:
    """The id of a model (Job, Dataset) or the string itself."""
    if isinstance(obj, str):
        return obj
    oid = getattr(obj, "id", None)
    if not isinstance(oid, str):
        raise TypeError(f"expected an id or an object with .id, got {type(obj).__name__}")
    return oid


def job_body(
    dataset: str | Dataset,
    *,
    method: str | Mapping[str, Any] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    eval_datasets: Iterable[str | Dataset] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/jobs``. Flat options are sorted into their place: ``ratio``, ``towers``,
    ``exclude_*``, ``score_reduction`` and ``scoring_batch_size`` into ``method``; ``epochs``,
    ``learning_rate``, ``batch_size``, ... into ``hyperparameters``; the rest (``model``, ``pretrained``,
    ``validation_fraction``, ``templates``, ``metadata``) at the top. Options not given are left to the
    server's defaults (one source for those)."""
    m: dict[str, Any] = dict(method) if isinstance(method, Mapping) else {"type": method or "saft"}
    hp: dict[str, Any] = dict(hyperparameters or {})
    if "scoring_batch_size" in hp:  # a hyper-parameter until it became the SAFT method's (servers accept both)
        options.setdefault("scoring_batch_size", hp.pop("scoring_batch_size"))
    top: dict[str, Any] = {"dataset_id": id_of(dataset)}
    for name, value in options.items():
        if value is None and name not in ("pretrained", "grad_clip", "shots"):
            continue
        if name in _METHOD_FIELDS:
            m[name] = value
        elif name in _HYPER_FIELDS:
            hp[name] = value
        elif name in JobCreate.model_fields:
            top[name] = value
        else:
            raise TypeError(f"unknown job option {name!r}")
    if eval_datasets is not None:
        top["eval_dataset_ids"] = [id_of(d) for d in eval_datasets]
    if m.get("type") == "full" and set(m) - {"type"}:
        raise SaftClientError(f"method 'full' takes no {sorted(set(m) - {'type'})}")
    top["method"] = m
    if hp:
        top["hyperparameters"] = hp
    # JSON has no NaN or infinity (and pydantic would write them as null: "no grad clip"): refuse them by name.
    for where, value in _numbers(top):
        if not math.isfinite(value):
            raise SaftClientError(f"invalid job options: {where} must be a finite number, got {value}")
    # Validate the shape here (unknown fields, wrong types) so a typo fails before a request is made.
    try:
        return JobCreate.model_validate(top).model_dump(mode="json", exclude_unset=True)
    except pydantic.ValidationError as e:
        raise SaftClientError(f"invalid job options: {e}") from e


def _numbers(obj: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """``(dotted path, value)`` of every float in a JSON-like ``obj``."""
    if isinstance(obj, float):
        yield where, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")


def import_body(path: str | os.PathLike[str], name: str | None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/datasets`` importing folder ``path`` on the server (not resolved here: it is
    a path on the server's machine); the name defaults to the folder's."""
    where = os.fspath(path)
    return {"name": name or PurePosixPath(where).name or where, "source": {"type": "path", "path": where}}


def classify_form(
    job: str | Job | None,
    model: str | None,
    pretrained: str | None,
    labels: list[str] | None,
    alpha: float | Literal["recommended"] | None,
    top_k: int | None,
) -> dict[str, str]:
    form: dict[str, str] = {}
    if job is not None:
        form["job_id"] = id_of(job)
    if model is not None:
        form["model"] = model
    if pretrained is not None:
        form["pretrained"] = pretrained
    if labels is not None:
        form["labels"] = json.dumps(list(labels))
    if alpha is not None:
        form["alpha"] = alpha if alpha == "recommended" else repr(float(alpha))
    if top_k is not None:
        form["top_k"] = str(int(top_k))
    return form


def image_files(images: Iterable[str | os.PathLike[str] | tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """``(filename, bytes)`` of each image: a path, or a ``(filename, bytes)`` pair."""
    for img in images:
        if isinstance(img, tuple):
            yield img[0], img[1]
        else:
            p = Path(img)
            yield p.name, p.read_bytes()
