"""The asynchronous client: the same calls as ``Client``, as coroutines (``async for`` for lists and streams).

Files are read and written with blocking calls in small chunks (a folder's zip is built as it is sent); that
keeps the package free of extra dependencies and is short per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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


class AsyncClient:
    """``Client`` for asyncio: ``async with AsyncClient(url, key) as c: job = await c.jobs.wait(job)``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = resolve_config(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
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
        """As ``Client.request``."""
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
                response = await self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as e:
                if attempt >= self.retry.max_retries:
                    raise ConnectionFailed(f"{method} {request.url}: {type(e).__name__}: {e}") from e
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.is_success:
                return response
            if method == "DELETE" and attempt > 0 and response.status_code == 404:
                await response.aclose()
                return response
            if stream:
                await response.aread()
            if should_retry(response) and attempt < self.retry.max_retries:
                wait = self.retry.delay(attempt, parse_retry_after(response.headers.get("Retry-After")))
                await response.aclose()
                await asyncio.sleep(wait)
                attempt += 1
                continue
            await response.aclose()
            raise api_error(response)

    async def _get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate((await self.request("GET", path, params=params or None)).json())

    async def _pages(
        self, path: str, model: type[M], params: dict[str, Any], limit: int | None
    ) -> AsyncIterator[M]:
        cursor: str | None = None
        n = 0
        while True:
            q = {**params, **({"cursor": cursor} if cursor else {})}
            page = (await self.request("GET", path, params=q)).json()
            for item in page["data"]:
                yield model.model_validate(item)
                n += 1
                if limit is not None and n >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def _download(
        self, path: str, dest: str | os.PathLike[str], progress: bool | Progress | None
    ) -> Path:
        cb, close_bar = progress_callback(progress, Path(dest).name)
        attempt = 0
        try:
            while True:
                response = await self.request("GET", path, stream=True)
                writer = VerifiedWriter(dest, response.headers.get("X-Checksum-SHA256"), str(response.url))
                total = (
                    int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                )
                try:
                    async for chunk in response.aiter_bytes(CHUNK):
                        writer.write(chunk)
                        if cb:
                            cb(writer.size, total)
                except RETRY_EXCEPTIONS as e:
                    writer.abort()
                    if attempt >= self.retry.max_retries:
                        raise ConnectionFailed(f"GET {path}: {type(e).__name__}: {e}") from e
                    await asyncio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                except BaseException:
                    writer.abort()
                    raise
                finally:
                    await response.aclose()
                return writer.commit()
        finally:
            close_bar()

    async def classify(
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
        """As ``Client.classify``."""
        form = classify_form(job, model, pretrained, labels, alpha, top_k)
        files = [
            ("images", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
            for name, data in image_files(images)
        ]
        response = await self.request("POST", "/v1/classify", body=lambda: {"data": form, "files": files})
        return Classification.model_validate(response.json())

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo.model_validate(m) for m in (await self.request("GET", "/v1/models")).json()["data"]]


class AsyncDatasets:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def upload(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        progress: bool | Progress | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """As ``Client.datasets.upload``."""
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
                stream: Any = ReadableChunks(zip_chunks(p, files), cb, sum(f.stat().st_size for f in files))
            else:
                f = open(p, "rb")  # noqa: SIM115 - closed after the request
                opened.append(f)
                stream = CountingFile(f, cb, p.stat().st_size)
            return {"files": {"file": (filename, stream, "application/octet-stream")}, "data": {"name": name}}

        try:
            response = await self._c.request(
                "POST", "/v1/datasets", body=body, idempotency_key=idempotency_key
            )
        finally:
            for f in opened:
                f.close()
            close_bar()
        return Dataset.model_validate(response.json())

    async def get(self, dataset: str | Dataset) -> Dataset:
        return await self._c._get(f"/v1/datasets/{id_of(dataset)}", Dataset)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> AsyncIterator[Dataset]:
        return self._c._pages("/v1/datasets", Dataset, {"limit": page_size}, limit)

    async def delete(self, dataset: str | Dataset) -> None:
        await self._c.request("DELETE", f"/v1/datasets/{id_of(dataset)}")


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        dataset: str | Dataset,
        *,
        method: str | Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        eval_datasets: Iterable[str | Dataset] | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """As ``Client.jobs.create``."""
        body = job_body(
            dataset, method=method, hyperparameters=hyperparameters, eval_datasets=eval_datasets, **options
        )
        response = await self._c.request("POST", "/v1/jobs", json=body, idempotency_key=idempotency_key)
        return Job.model_validate(response.json())

    async def get(self, job: str | Job) -> Job:
        return await self._c._get(f"/v1/jobs/{id_of(job)}", Job)

    def list(
        self, *, status: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status
        return self._c._pages("/v1/jobs", Job, params, limit)

    async def cancel(self, job: str | Job) -> Job:
        return Job.model_validate((await self._c.request("POST", f"/v1/jobs/{id_of(job)}/cancel")).json())

    async def delete(self, job: str | Job) -> None:
        await self._c.request("DELETE", f"/v1/jobs/{id_of(job)}")

    async def events(self, job: str | Job, *, after: int = 0) -> list[JobEvent]:
        r = await self._c.request("GET", f"/v1/jobs/{id_of(job)}/events", params={"after": after})
        return [JobEvent.model_validate(e) for e in r.json()["data"]]

    async def stream(
        self, job: str | Job, *, after: int = 0, max_reconnects: int = 10
    ) -> AsyncIterator[JobEvent]:
        """As ``Client.jobs.stream``: resumes with ``Last-Event-ID``, no gaps, no duplicates."""
        path = f"/v1/jobs/{id_of(job)}/events/stream"
        last = after  # the largest SSE id received: where a reconnect resumes
        seen: set[int] = set()  # ids yielded: a reconnect or a late event never yields one twice
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            response = await self._c.request("GET", path, headers=headers, stream=True)
            reason = "the server closed the stream before its end"
            try:
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    msg = decoder.feed(line)
                    if msg is None:
                        continue
                    if msg.event == "end":
                        return
                    event = JobEvent.model_validate_json(msg.data)
                    if msg.id is not None:  # the server's cursor; a late event (see below) comes without one
                        last = max(last, int(msg.id))
                    if event.id in seen or event.id <= after:
                        continue
                    seen.add(event.id)
                    failures = 0
                    yield event
            except RETRY_EXCEPTIONS as e:
                reason = f"{type(e).__name__}: {e}"
            finally:
                await response.aclose()
            failures += 1
            if failures > max_reconnects:
                raise StreamError(f"{path}: {reason}; gave up after {max_reconnects} reconnects")
            await asyncio.sleep(self._c.retry.delay(failures - 1))

    async def wait(
        self,
        job: str | Job,
        *,
        on_event: Callable[[JobEvent], Any] | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
    ) -> Job:
        """As ``Client.jobs.wait``."""
        job_id = id_of(job)
        deadline = time.monotonic() + timeout if timeout else None
        async for event in self.stream(job_id):
            if on_event:
                on_event(event)
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
        final = await self.get(job_id)
        while not final.done:
            await asyncio.sleep(0.5)
            final = await self.get(job_id)
        if raise_on_failure and final.status != "succeeded":
            raise JobFailed(final)
        return final

    async def evaluations(self, job: str | Job) -> list[Evaluation]:
        r = await self._c.request("GET", f"/v1/jobs/{id_of(job)}/evaluations")
        return [Evaluation.model_validate(e) for e in r.json()["data"]]

    async def mask(self, job: str | Job) -> Mask:
        return await self._c._get(f"/v1/jobs/{id_of(job)}/mask", Mask)

    async def download_checkpoint(
        self, job: str | Job, path: str | os.PathLike[str], *, progress: bool | Progress | None = None
    ) -> Path:
        return await self._c._download(f"/v1/jobs/{id_of(job)}/checkpoint", path, progress)

    async def download_mask(
        self, job: str | Job, path: str | os.PathLike[str], *, progress: bool | Progress | None = None
    ) -> Path:
        return await self._c._download(f"/v1/jobs/{id_of(job)}/mask/file", path, progress)
