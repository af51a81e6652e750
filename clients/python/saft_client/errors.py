"""Exceptions. An error answer of the service (an RFC 9457 problem document) becomes an ``APIError``
subclass chosen by its status, carrying ``code`` (stable, for programs), ``detail`` (for people) and, for a
validation error, ``errors`` (``[{loc, msg, type}]``)::

    SaftClientError
    ├── APIError(status, code, detail, errors, problem)
    │   ├── BadRequest 400        ├── Conflict 409          ├── RateLimited 429 (retry_after)
    │   ├── Unauthorized 401      ├── Gone 410              ├── ServerError 500
    │   ├── Forbidden 403         ├── PayloadTooLarge 413   └── Unavailable 502/503/504 (retry_after)
    │   ├── NotFound 404          └── ValidationError 415/422
    ├── ConnectionFailed          (the server could not be reached, after the retries)
    ├── ChecksumMismatch          (a download's SHA-256 is not the one the server announced)
    ├── StreamError               (the event stream could not be resumed, after the retries)
    └── JobFailed                 (``jobs.wait(..., raise_on_failure=True)`` on a failed or cancelled job)
"""

from __future__ import annotations

from typing import Any


class SaftClientError(Exception):
    """Base class of everything this package raises."""


class APIError(SaftClientError):
    """The service answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.problem = problem or {}
        self.retry_after = retry_after


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class Gone(APIError):
    pass


class PayloadTooLarge(APIError):
    pass


class ValidationError(APIError):
    """The request was refused as invalid (422, or 415 for an archive type the server does not read)."""


class RateLimited(APIError):
    """429: a quota; ``retry_after`` is the server's advice in seconds."""


class ServerError(APIError):
    pass


class Unavailable(APIError):
    """502/503/504: a dependency (database, queue, model) is unavailable; ``retry_after`` when advised."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: ValidationError,
    422: ValidationError,
    429: RateLimited,
    500: ServerError,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_class(status: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIError


class ConnectionFailed(SaftClientError):
    """The server could not be reached (or dropped the connection) on every attempt; ``url`` is the server's
    base URL when known, ``reason`` what the last attempt met (``[Errno 111] Connection refused``)."""

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class ChecksumMismatch(SaftClientError):
    """A downloaded file's SHA-256 differs from the server's; nothing was written."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"{url}: SHA-256 {actual} does not match the server's {expected}; nothing written")
        self.url = url
        self.expected = expected
        self.actual = actual


class StreamError(SaftClientError):
    """The event stream broke and could not be resumed within the retries."""


class JobFailed(SaftClientError):
    """A waited-for job ended failed or cancelled; ``job`` is its final state."""

    def __init__(self, job: Any) -> None:
        err = f" ({job.error.code}: {job.error.message})" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{err}")
        self.job = job
