"""The asynchronous client: the same calls as ``Client``, as coroutines (``async for`` for lists and streams).

Files are read and written with blocking calls in small chunks (a folder's zip is built as it is sent); that
keeps the package free of extra dependencies and is short per chunk. What takes long in one call (zipping a
large folder for a multipart upload, hashing a file) runs in a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import mimetypes
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from ._base import (
    COMPLETE_TIMEOUT,
    IDEMPOTENCY_HEADER,
    RETRY_EXCEPTIONS,
    RetryPolicy,
    SSEDecoder,
    api_error,
    classify_form,
    default_headers,
    id_of,
    image_files,
    import_body,
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
from ._uploads import (
    CHECKSUM_HEADER,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PARALLEL,
    REPAIRABLE,
    Part,
    PartBody,
    Source,
    StateStore,
    Tally,
    UploadState,
    UploadStopped,
    archive_source,
    folder_source,
    parts_to_send,
    plan_parts,
    resolve_cache_dir,
    sha256_of,
    source_bytes,
    state_key,
)
from .errors import (
    APIError,
    ConnectionFailed,
    Gone,
    JobFailed,
    NotFound,
    SaftClientError,
    StreamError,
    ValidationError,
)
from .models import (
    Classification,
    Dataset,
    Evaluation,
    Job,
    JobEvent,
    Mask,
    ModelInfo,
    Upload,
    UploadPart,
    Usage,
)
from .webhooks import AsyncWebhooks

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
        self._answered = False  # whether the server has answered yet (RetryPolicy.retry_unreached)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.uploads = AsyncUploads(self)
        self.webhooks = AsyncWebhooks(self)

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
        timeout: Any = httpx.USE_CLIENT_DEFAULT,  # an httpx.Timeout for this call; default: the client's
    ) -> httpx.Response:
        """As ``Client.request``."""
        key = idempotency_key or (new_idempotency_key() if method == "POST" else None)
        hdrs = dict(headers or {})
        if key:
            hdrs[IDEMPOTENCY_HEADER] = key
        attempt = 0
        while True:
            request = self._http.build_request(
                method, path, params=params, json=json, headers=hdrs, timeout=timeout, **(body() if body else {})
            )
            try:
                response = await self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as e:
                if self.retry.gives_up(attempt, e, answered=self._answered):
                    raise ConnectionFailed(
                        f"{method} {request.url}: {type(e).__name__}: {e}", url=self.base_url, reason=str(e)
                    ) from e
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            self._answered = True
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
        self, path: str, dest: str | os.PathLike[str], progress: bool | Progress | None, overwrite: bool = True
    ) -> Path:
        if not overwrite and Path(dest).exists():
            raise FileExistsError(f"{dest} exists; nothing written")
        cb, close_bar = progress_callback(progress, Path(dest).name)
        attempt = 0
        try:
            while True:
                response = await self.request("GET", path, stream=True)
                writer = VerifiedWriter(
                    dest, response.headers.get("X-Checksum-SHA256"), str(response.url), overwrite=overwrite
                )
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
                        raise ConnectionFailed(
                            f"GET {path}: {type(e).__name__}: {e}", url=self.base_url, reason=str(e)
                        ) from e
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

    async def usage(self) -> Usage:
        """As ``Client.usage``."""
        return await self._get("/v1/usage", Usage)


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
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        parallel: int = DEFAULT_PARALLEL,
        resume: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Dataset:
        """As ``Client.datasets.upload`` (the parts sent by ``parallel`` tasks)."""
        filename, p, is_dir = dataset_source(path)
        name = name or (p.resolve().name if is_dir else filename.split(".")[0])
        if await asyncio.to_thread(source_bytes, p, is_dir) <= multipart_threshold:
            return await self._upload_form(p, filename, name, is_dir, progress, idempotency_key)
        cache = resolve_cache_dir(cache_dir)
        if is_dir:
            source = await asyncio.to_thread(folder_source, p, filename, cache)
        else:
            source = archive_source(p)
        return await self._c.uploads._send(
            source,
            name,
            cache,
            progress=progress,
            parallel=parallel,
            resume=resume,
            idempotency_key=idempotency_key,
        )

    async def _upload_form(
        self,
        p: Path,
        filename: str,
        name: str,
        is_dir: bool,
        progress: bool | Progress | None,
        idempotency_key: str | None,
    ) -> Dataset:
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

    async def import_path(
        self, path: str | os.PathLike[str], name: str | None = None, *, idempotency_key: str | None = None
    ) -> Dataset:
        """As ``Client.datasets.import_path``."""
        body = import_body(path, name)
        response = await self._c.request("POST", "/v1/datasets", json=body, idempotency_key=idempotency_key)
        return Dataset.model_validate(response.json())

    async def get(self, dataset: str | Dataset) -> Dataset:
        return await self._c._get(f"/v1/datasets/{id_of(dataset)}", Dataset)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> AsyncIterator[Dataset]:
        return self._c._pages("/v1/datasets", Dataset, {"limit": page_size}, limit)

    async def delete(self, dataset: str | Dataset) -> None:
        await self._c.request("DELETE", f"/v1/datasets/{id_of(dataset)}")


class AsyncUploads:
    """As ``Client.uploads``."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self, filename: str, size: int, *, sha256: str | None = None, idempotency_key: str | None = None
    ) -> Upload:
        body = {"filename": filename, "bytes": size, "sha256": sha256}
        response = await self._c.request("POST", "/v1/uploads", json=body, idempotency_key=idempotency_key)
        return Upload.model_validate(response.json())

    async def put_part(
        self, upload: str | Upload, number: int, data: bytes, *, sha256: str | None = None
    ) -> UploadPart:
        headers = {
            "Content-Type": "application/octet-stream",
            CHECKSUM_HEADER: sha256 or hashlib.sha256(data).hexdigest(),
        }
        path = f"/v1/uploads/{id_of(upload)}/parts/{number}"
        response = await self._c.request("PUT", path, body=lambda: {"content": data}, headers=headers)
        return UploadPart.model_validate(response.json())

    async def get(self, upload: str | Upload) -> Upload:
        return await self._c._get(f"/v1/uploads/{id_of(upload)}", Upload)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> AsyncIterator[Upload]:
        return self._c._pages("/v1/uploads", Upload, {"limit": page_size}, limit)

    async def complete(
        self, upload: str | Upload, name: str, *, idempotency_key: str | None = None
    ) -> Dataset:
        path = f"/v1/uploads/{id_of(upload)}/complete"
        # The server checks and extracts the whole file before it answers (about 45 s for 2 GB on 2 cores): wait
        # for it rather than time out and retry into "still being processed".
        response = await self._c.request(
            "POST", path, json={"name": name}, idempotency_key=idempotency_key, timeout=COMPLETE_TIMEOUT
        )
        return Dataset.model_validate(response.json())

    async def abort(self, upload: str | Upload) -> None:
        await self._c.request("DELETE", f"/v1/uploads/{id_of(upload)}")

    # --- the resumable upload of ``datasets.upload``: as ``Uploads._send`` ------------------------------------
    async def _send(
        self,
        source: Source,
        name: str,
        cache: Path,
        *,
        progress: bool | Progress | None,
        parallel: int,
        resume: bool,
        idempotency_key: str | None,
    ) -> Dataset:
        store = StateStore(cache)
        state = await self._state(store, source, resume, progress)
        cb, close_bar = progress_callback(progress, f"upload {source.filename}")
        tally = Tally(state.size, cb)
        try:
            for round_ in (1, 2):
                opened = await self._open(state, store)
                if isinstance(opened, Dataset):
                    store.clear(state)
                    return opened
                try:
                    await self._fill(opened, state, store, tally, parallel)
                    return await self._finish(opened, state, store, name, idempotency_key, tally, parallel)
                except (NotFound, Gone):
                    if round_ == 2:
                        raise
                    log.warning("upload %s is gone from the server; starting it again", state.upload_id)
                    state.forget_upload()
                    store.save(state)
            raise AssertionError("unreachable")
        finally:
            close_bar()

    async def _state(
        self, store: StateStore, source: Source, resume: bool, progress: bool | Progress | None
    ) -> UploadState:
        key = state_key(self._c.base_url, source)
        state = store.load(key)
        if state is not None and resume:
            return state
        if state is not None:
            if state.upload_id:
                with contextlib.suppress(APIError):
                    await self.abort(state.upload_id)
            store.clear(state, archive=False)
        cb, close_bar = progress_callback(True if progress is True else None, f"sha256 {source.filename}")
        try:
            return await asyncio.to_thread(store.new, key, self._c.base_url, source, cb)
        finally:
            close_bar()

    async def _open(self, state: UploadState, store: StateStore) -> Upload | Dataset:
        if state.upload_id:
            try:
                upload = await self.get(state.upload_id)
                if state.matches(upload):
                    state.attach(upload)
                    store.save(state)
                    return upload
            except (NotFound, Gone):
                if state.complete_key and state.complete_name:
                    with contextlib.suppress(NotFound, Gone):
                        return await self.complete(
                            state.upload_id, state.complete_name, idempotency_key=state.complete_key
                        )
            state.forget_upload()
            store.save(state)
        upload = await self.create(
            state.filename, state.size, sha256=state.sha256, idempotency_key=state.create_key
        )
        state.attach(upload)
        store.save(state)
        return upload

    async def _fill(
        self, upload: Upload, state: UploadState, store: StateStore, tally: Tally, parallel: int
    ) -> None:
        parts = plan_parts(upload.bytes, upload.part_size)
        if len(parts) != upload.parts_total:
            raise SaftClientError(
                f"upload {upload.id}: {upload.parts_total} parts announced, {len(parts)} planned"
            )
        file = Path(state.file)
        for part in state.unhashed(upload):
            store.record(state, part.number, await asyncio.to_thread(sha256_of, file, part.offset, part.size))
        todo = parts_to_send(parts, upload, state.hashes)
        tally.start(state.size - sum(p.size for p in todo))
        stop = threading.Event()  # as in Client: the parts in flight stop at their next chunk
        queue = list(todo)

        async def worker() -> None:
            while queue:
                await self._put(upload.id, queue.pop(0), state, store, tally, stop)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(parallel, len(todo)))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _put(
        self,
        upload_id: str,
        part: Part,
        state: UploadState,
        store: StateStore,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        body = PartBody(Path(state.file), part, tally, stop)
        path = f"/v1/uploads/{upload_id}/parts/{part.number}"
        sha = state.hashes.get(part.number)
        for attempt in range(self._c.retry.max_retries + 1):
            if stop.is_set():
                raise UploadStopped("the upload was stopped")
            if not sha or attempt > 0:
                sha = await asyncio.to_thread(sha256_of, body.file, part.offset, part.size)
            try:
                answer = (await self._c.request("PUT", path, body=body.aio, headers=body.headers(sha))).json()
            except ValidationError as e:
                if e.code != "checksum_mismatch" or attempt == self._c.retry.max_retries:
                    raise
                log.warning("%s: the server read another checksum; sending it again", path)
                continue
            if UploadPart.model_validate(answer).sha256 != sha:
                raise SaftClientError(f"{path}: the server holds SHA-256 {answer['sha256']}, not {sha}")
            store.record(state, part.number, sha)
            return

    async def _finish(
        self,
        upload: Upload,
        state: UploadState,
        store: StateStore,
        name: str,
        idempotency_key: str | None,
        tally: Tally,
        parallel: int,
    ) -> Dataset:
        key = state.complete_key_for(name, idempotency_key)
        store.save(state)
        for attempt in (1, 2):
            try:
                dataset = await self.complete(upload.id, name, idempotency_key=key)
            except (NotFound, Gone):
                raise  # the upload expired: a new one is begun
            except APIError as e:
                if attempt == 2 or e.code not in REPAIRABLE:
                    await self._forget_if_gone(state, store)
                    raise
                if e.code == "checksum_mismatch":
                    state.hashes = {}  # every part rehashed from the file; those the server holds otherwise, resent
            else:
                store.clear(state)
                return dataset
            upload = await self.get(upload.id)
            await self._fill(upload, state, store, tally, parallel)
        raise AssertionError("unreachable")

    async def _forget_if_gone(self, state: UploadState, store: StateStore) -> None:
        try:
            await self.get(state.upload_id or "")
        except (NotFound, Gone):
            store.clear(state)


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

    async def events(self, job: str | Job, *, after: int = 0) -> builtins.list[JobEvent]:  # builtins: the method list() shadows the type
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

    async def evaluations(self, job: str | Job) -> builtins.list[Evaluation]:
        r = await self._c.request("GET", f"/v1/jobs/{id_of(job)}/evaluations")
        return [Evaluation.model_validate(e) for e in r.json()["data"]]

    async def mask(self, job: str | Job) -> Mask:
        return await self._c._get(f"/v1/jobs/{id_of(job)}/mask", Mask)

    async def download_checkpoint(
        self,
        job: str | Job,
        path: str | os.PathLike[str],
        *,
        progress: bool | Progress | None = None,
        overwrite: bool = True,
    ) -> Path:
        return await self._c._download(f"/v1/jobs/{id_of(job)}/checkpoint", path, progress, overwrite)

    async def download_mask(
        self,
        job: str | Job,
        path: str | os.PathLike[str],
        *,
        progress: bool | Progress | None = None,
        overwrite: bool = True,
    ) -> Path:
        return await self._c._download(f"/v1/jobs/{id_of(job)}/mask/file", path, progress, overwrite)
