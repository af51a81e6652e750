"""The synchronous client: ``Client(url, api_key)`` with ``.datasets``, ``.jobs``, ``.classify``."""

from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from ._base import (
    IDEMPOTENCY_HEADER,
    RETRY_EXCEPTIONS,
    RetryPolicy,
    SSEDecoder,
    api_error,
    classify_form,
    default_headers,
    id_of,
    image_files,
    job_body,
    new_idempotency_key,
    parse_retry_after,
    resolve_config,
    should_retry,
)
from ._transfer import (
    CHUNK,
    CountingFile,
    Progress,
    ReadableChunks,
    VerifiedWriter,
    dataset_source,
    folder_files,
    progress_callback,
    zip_chunks,
)
from .errors import ConnectionFailed, JobFailed, SaftClientError, StreamError
from .models import Classification, Dataset, Evaluation, Job, JobEvent, Mask, ModelInfo

log = logging.getLogger("saft_client")
M = TypeVar("M", bound=BaseModel)
BodyFactory = Callable[[], dict[str, Any]]


class Client:
    """A client of one SAFT service.

    ``base_url`` and ``api_key`` default to ``SAFT_URL`` and ``SAFT_API_KEY``. Every request is retried on
    429 (after ``Retry-After``), 502/503/504 and connection errors, per ``retry``; a POST carries one
    ``Idempotency-Key`` across its retries. ``transport`` is passed to httpx (tests use it to inject faults).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = resolve_config(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)

    # --- plumbing -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: BodyFactory | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One logical call: send, retry per the policy, return a 2xx answer or raise its ``APIError``.

        ``body`` builds the request's ``content``/``files``/``data`` afresh for every attempt (a streamed upload
        cannot be sent twice from one iterator). A POST gets one ``Idempotency-Key`` for all attempts."""
        key = idempotency_key or (new_idempotency_key() if method == "POST" else None)
        hdrs = dict(headers or {})
        if key:
            hdrs[IDEMPOTENCY_HEADER] = key
        attempt = 0
        while True:
            request = self._http.build_request(
                method, path, params=params, json=json, headers=hdrs, **(body() if body else {})
            )
            try:
                response = self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as e:
                if attempt >= self.retry.max_retries:
                    raise ConnectionFailed(f"{method} {request.url}: {type(e).__name__}: {e}") from e
                wait = self.retry.delay(attempt)
                log.warning(
                    "%s %s: %s; retry %d in %.1f s", method, path, type(e).__name__, attempt + 1, wait
                )
                time.sleep(wait)
                attempt += 1
                continue
            if response.is_success:
                return response
            if method == "DELETE" and attempt > 0 and response.status_code == 404:
                response.close()  # an earlier attempt deleted it and its answer was lost
                return response
            if stream:
                response.read()
            if should_retry(response) and attempt < self.retry.max_retries:
                wait = self.retry.delay(attempt, parse_retry_after(response.headers.get("Retry-After")))
                log.warning(
                    "%s %s: %s; retry %d in %.1f s", method, path, response.status_code, attempt + 1, wait
                )
                response.close()
                time.sleep(wait)
                attempt += 1
                continue
            response.close()
            raise api_error(response)

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate(self.request("GET", path, params=params or None).json())

    def _pages(self, path: str, model: type[M], params: dict[str, Any], limit: int | None) -> Iterator[M]:
        """Items of a cursor-paged list, fetching pages as the iterator is consumed; at most ``limit``."""
        cursor: str | None = None
        n = 0
        while True:
            page = self.request(
                "GET", path, params={**params, **({"cursor": cursor} if cursor else {})}
            ).json()
            for item in page["data"]:
                yield model.model_validate(item)
                n += 1
                if limit is not None and n >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _download(self, path: str, dest: str | os.PathLike[str], progress: bool | Progress | None) -> Path:
        """Stream ``path`` into ``dest``: verified against ``X-Checksum-SHA256`` and renamed into place only
        then; a broken transfer is retried from the start, a checksum mismatch raises (nothing written)."""
        cb, close_bar = progress_callback(progress, Path(dest).name)
        attempt = 0
        try:
            while True:
                response = self.request("GET", path, stream=True)
                writer = VerifiedWriter(dest, response.headers.get("X-Checksum-SHA256"), str(response.url))
                total = (
                    int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                )
                try:
                    for chunk in response.iter_bytes(CHUNK):
                        writer.write(chunk)
                        if cb:
                            cb(writer.size, total)
                except RETRY_EXCEPTIONS as e:
                    writer.abort()
                    if attempt >= self.retry.max_retries:
                        raise ConnectionFailed(f"GET {path}: {type(e).__name__}: {e}") from e
                    time.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                except BaseException:
                    writer.abort()
                    raise
                finally:
                    response.close()
                return writer.commit()
        finally:
            close_bar()

    # --- top-level calls ----------------------------------------------------------------------------------
    def classify(
        self,
        images: Iterable[str | os.PathLike[str] | tuple[str, bytes]],
        *,
        job: str | Job | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        labels: list[str] | None = None,
        alpha: float | Literal["recommended"] | None = None,
        top_k: int | None = None,
    ) -> Classification:
        """Classify images (paths or ``(filename, bytes)``) with a succeeded job's model (``job``; ``alpha``
        0 = base .. 1 = fine-tuned, or ``"recommended"``: the job's recommended alpha; labels default to its
        classes) or zero-shot with ``model`` and ``labels``. The answer's ``alpha`` is the one applied."""
        form = classify_form(job, model, pretrained, labels, alpha, top_k)
        files = [
            ("images", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
            for name, data in image_files(images)
        ]
        response = self.request("POST", "/v1/classify", body=lambda: {"data": form, "files": files})
        return Classification.model_validate(response.json())

    def models(self) -> list[ModelInfo]:
        """The base models the server knows."""
        return [ModelInfo.model_validate(m) for m in self.request("GET", "/v1/models").json()["data"]]

    def ready(self) -> bool:
        """Whether the service answers its readiness check (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False


class Datasets:
    """``client.datasets``: upload, list, get, delete."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        progress: bool | Progress | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """Upload an ImageFolder: a folder (zipped on the fly while it is sent, hidden files left out) or a
        .zip/.tar/.tar.gz archive. ``progress``: True for a tqdm bar (if installed) or a callable
        ``(bytes_sent, bytes_total_or_None)``; for a folder the total is the sum of its file sizes."""
        filename, p, is_dir = dataset_source(path)
        name = name or (p.resolve().name if is_dir else filename.split(".")[0])
        cb, close_bar = progress_callback(progress, f"upload {filename}")
        opened: list[Any] = []

        def body() -> dict[str, Any]:
            for f in opened:
                f.close()
            if is_dir:
                files = folder_files(p)
                if not files:
                    raise SaftClientError(f"{p}: the folder is empty")
                total = sum(f.stat().st_size for f in files)
                stream: Any = ReadableChunks(zip_chunks(p, files), cb, total)
            else:
                f = open(p, "rb")  # noqa: SIM115 - closed after the request
                opened.append(f)
                stream = CountingFile(f, cb, p.stat().st_size)
            return {"files": {"file": (filename, stream, "application/octet-stream")}, "data": {"name": name}}

        try:
            response = self._c.request("POST", "/v1/datasets", body=body, idempotency_key=idempotency_key)
        finally:
            for f in opened:
                f.close()
            close_bar()
        return Dataset.model_validate(response.json())

    def get(self, dataset: str | Dataset) -> Dataset:
        return self._c._get(f"/v1/datasets/{id_of(dataset)}", Dataset)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[Dataset]:
        """Every dataset, newest first (pages fetched as you iterate); at most ``limit``."""
        return self._c._pages("/v1/datasets", Dataset, {"limit": page_size}, limit)

    def delete(self, dataset: str | Dataset) -> None:
        """Delete a dataset and its files (``Conflict`` dataset_in_use while a queued or running job uses it)."""
        self._c.request("DELETE", f"/v1/datasets/{id_of(dataset)}")


class Jobs:
    """``client.jobs``: create, get, list, cancel, delete, events, stream, wait, results, downloads."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self,
        dataset: str | Dataset,
        *,
        method: str | Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        eval_datasets: Iterable[str | Dataset] | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Start a fine-tuning job on ``dataset``. ``method`` is "saft" (default) or "full" (or the whole
        object); flat options go where they belong: ``ratio=0.001, epochs=10, learning_rate=1e-3,
        batch_size=32, validation_fraction=0.2, model="saft-tiny", templates=[...], metadata={...}`` (the
        names of the API's ``JobCreate``, ``method`` and ``hyperparameters``). Omitted: the server's defaults."""
        body = job_body(
            dataset, method=method, hyperparameters=hyperparameters, eval_datasets=eval_datasets, **options
        )
        response = self._c.request("POST", "/v1/jobs", json=body, idempotency_key=idempotency_key)
        return Job.model_validate(response.json())

    def get(self, job: str | Job) -> Job:
        return self._c._get(f"/v1/jobs/{id_of(job)}", Job)

    def list(
        self, *, status: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[Job]:
        """Jobs newest first (pages fetched as you iterate), optionally of one status; at most ``limit``."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status
        return self._c._pages("/v1/jobs", Job, params, limit)

    def cancel(self, job: str | Job) -> Job:
        """Cancel: a queued job at once, a running one at its next step (``Conflict`` if finished)."""
        return Job.model_validate(self._c.request("POST", f"/v1/jobs/{id_of(job)}/cancel").json())

    def delete(self, job: str | Job) -> None:
        """Delete a finished job and its files (``Conflict`` job_active while queued or running)."""
        self._c.request("DELETE", f"/v1/jobs/{id_of(job)}")

    def events(self, job: str | Job, *, after: int = 0) -> list[JobEvent]:
        """Events so far with an id above ``after`` (one page of up to 1000)."""
        data = self._c.request("GET", f"/v1/jobs/{id_of(job)}/events", params={"after": after}).json()["data"]
        return [JobEvent.model_validate(e) for e in data]

    def stream(self, job: str | Job, *, after: int = 0, max_reconnects: int = 10) -> Iterator[JobEvent]:
        """The job's events as they happen (Server-Sent Events), until the job has finished.

        A dropped connection is resumed with ``Last-Event-ID`` (the largest SSE id received), so no event is
        missed and none is yielded twice; ``StreamError`` after ``max_reconnects`` reconnects in a row without
        news. Events come in id order, except that an event committed late (after one with a larger id) is
        sent when it appears, without an SSE id; it is yielded then, once."""
        path = f"/v1/jobs/{id_of(job)}/events/stream"
        last = after  # the largest SSE id received: where a reconnect resumes
        seen: set[int] = set()  # ids yielded: a reconnect or a late event never yields one twice
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            response = self._c.request("GET", path, headers=headers, stream=True)
            reason = "the server closed the stream before its end"
            try:
                decoder = SSEDecoder()
                for line in response.iter_lines():
                    msg = decoder.feed(line)
                    if msg is None:
                        continue
                    if msg.event == "end":
                        return
                    event = JobEvent.model_validate_json(msg.data)
                    if msg.id is not None:  # the server's cursor; a late event (see below) comes without one
                        last = max(last, int(msg.id))
                    if event.id in seen or event.id <= after:
                        continue  # already yielded before a reconnect
                    seen.add(event.id)
                    failures = 0
                    yield event
            except RETRY_EXCEPTIONS as e:
                reason = f"{type(e).__name__}: {e}"
            finally:
                response.close()
            failures += 1
            if failures > max_reconnects:
                raise StreamError(f"{path}: {reason}; gave up after {max_reconnects} reconnects")
            wait = self._c.retry.delay(failures - 1)
            log.info("%s: %s; resuming after event %d in %.1f s", path, reason, last, wait)
            time.sleep(wait)

    def wait(
        self,
        job: str | Job,
        *,
        on_event: Callable[[JobEvent], Any] | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> Job:
        """Follow the job's event stream until it has finished and return its final state. ``on_event`` sees
        every event once, in order. ``timeout`` (seconds) is checked as events arrive (``TimeoutError``);
        ``raise_on_failure`` raises ``JobFailed`` for a failed or cancelled job."""
        job_id = id_of(job)
        deadline = time.monotonic() + timeout if timeout else None
        for event in self.stream(job_id):
            if on_event:
                on_event(event)
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
        final = self.get(job_id)
        while not final.done:  # the stream ends once the row is final; this is only a safety net
            time.sleep(0.5)
            final = self.get(job_id)
        if raise_on_failure and final.status != "succeeded":
            raise JobFailed(final)
        return final

    def evaluations(self, job: str | Job) -> list[Evaluation]:
        data = self._c.request("GET", f"/v1/jobs/{id_of(job)}/evaluations").json()["data"]
        return [Evaluation.model_validate(e) for e in data]

    def mask(self, job: str | Job) -> Mask:
        return self._c._get(f"/v1/jobs/{id_of(job)}/mask", Mask)

    def download_checkpoint(
        self, job: str | Job, path: str | os.PathLike[str], *, progress: bool | Progress | None = None
    ) -> Path:
        """Download the sparse checkpoint to ``path`` (SHA-256 verified, written atomically); returns it."""
        return self._c._download(f"/v1/jobs/{id_of(job)}/checkpoint", path, progress)

    def download_mask(
        self, job: str | Job, path: str | os.PathLike[str], *, progress: bool | Progress | None = None
    ) -> Path:
        """Download the mask file to ``path`` (SHA-256 verified, written atomically); returns it."""
        return self._c._download(f"/v1/jobs/{id_of(job)}/mask/file", path, progress)
