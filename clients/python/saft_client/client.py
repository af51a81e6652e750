"""The synchronous client: ``Client(url, api_key)`` with ``.datasets``, ``.jobs``, ``.uploads``, ``.classify``."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
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
from .webhooks import Webhooks

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
        self._answered = False  # whether the server has answered yet (RetryPolicy.retry_unreached)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.uploads = Uploads(self)
        self.webhooks = Webhooks(self)

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
        timeout: Any = httpx.USE_CLIENT_DEFAULT,  # an httpx.Timeout for this call; default: the client's
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
                method, path, params=params, json=json, headers=hdrs, timeout=timeout, **(body() if body else {})
            )
            try:
                response = self._http.send(request, stream=stream)
            except RETRY_EXCEPTIONS as e:
                if self.retry.gives_up(attempt, e, answered=self._answered):
                    raise ConnectionFailed(
                        f"{method} {request.url}: {type(e).__name__}: {e}", url=self.base_url, reason=str(e)
                    ) from e
                wait = self.retry.delay(attempt)
                log.warning(
                    "%s %s: %s; retry %d in %.1f s", method, path, type(e).__name__, attempt + 1, wait
                )
                time.sleep(wait)
                attempt += 1
                continue
            self._answered = True
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

    def _download(
        self, path: str, dest: str | os.PathLike[str], progress: bool | Progress | None, overwrite: bool = True
    ) -> Path:
        """Stream ``path`` into ``dest``: verified against ``X-Checksum-SHA256`` and renamed into place only
        then; a broken transfer is retried from the start, a checksum mismatch raises (nothing written).
        ``overwrite=False``: an existing ``dest`` raises ``FileExistsError`` (before anything is fetched)."""
        if not overwrite and Path(dest).exists():
            raise FileExistsError(f"{dest} exists; nothing written")
        cb, close_bar = progress_callback(progress, Path(dest).name)
        attempt = 0
        try:
            while True:
                response = self.request("GET", path, stream=True)
                writer = VerifiedWriter(
                    dest, response.headers.get("X-Checksum-SHA256"), str(response.url), overwrite=overwrite
                )
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
                        raise ConnectionFailed(
                            f"GET {path}: {type(e).__name__}: {e}", url=self.base_url, reason=str(e)
                        ) from e
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

    def usage(self) -> Usage:
        """Your storage: bytes used (datasets, pending uploads, jobs' files) and the quota (None: none)."""
        return self._get("/v1/usage", Usage)

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
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        parallel: int = DEFAULT_PARALLEL,
        resume: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Dataset:
        """Upload an ImageFolder: a folder (hidden files left out) or a .zip/.tar/.tar.gz archive.

        Up to ``multipart_threshold`` bytes it goes in one request (a folder zipped on the fly). Above, it goes
        as a resumable multipart upload: ``parallel`` parts at once, each checked by its SHA-256 and retried
        alone; a folder is first zipped, deterministically, into ``cache_dir`` (default ``$SAFT_CACHE_DIR``,
        else ``$XDG_CACHE_HOME/saft``, else ``~/.cache/saft``), where a small state file remembers the upload.
        Called again on the same source (same path, size and mtime; for a folder, the same files) after an
        interruption, it sends only the parts the server does not hold; ``resume=False`` abandons an earlier
        attempt and starts anew. ``progress``: True for a tqdm bar (bytes, rate, ETA; if tqdm is installed)
        or a callable ``(bytes_done, bytes_total)``, whose first call gives where the transfer starts.
        ``idempotency_key``: of the one request, or of the multipart upload's completion."""
        filename, p, is_dir = dataset_source(path)
        name = name or (p.resolve().name if is_dir else filename.split(".")[0])
        if source_bytes(p, is_dir) <= multipart_threshold:
            return self._upload_form(p, filename, name, is_dir, progress, idempotency_key)
        cache = resolve_cache_dir(cache_dir)
        source = folder_source(p, filename, cache) if is_dir else archive_source(p)
        return self._c.uploads._send(
            source,
            name,
            cache,
            progress=progress,
            parallel=parallel,
            resume=resume,
            idempotency_key=idempotency_key,
        )

    def _upload_form(
        self,
        p: Path,
        filename: str,
        name: str,
        is_dir: bool,
        progress: bool | Progress | None,
        idempotency_key: str | None,
    ) -> Dataset:
        """The whole dataset in one ``multipart/form-data`` POST (a folder zipped while it is sent)."""
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

    def import_path(
        self, path: str | os.PathLike[str], name: str | None = None, *, idempotency_key: str | None = None
    ) -> Dataset:
        """Make a dataset of what is already on the server at ``path`` (absolute, inside one of the operator's
        import roots): a folder, read in place (``external``), or an archive, extracted into the store. Nothing
        is sent. ``name`` defaults to the last part of the path. ``ValidationError`` path_not_allowed outside
        the roots; ``Forbidden`` imports_disabled where the service has none."""
        body = import_body(path, name)
        response = self._c.request("POST", "/v1/datasets", json=body, idempotency_key=idempotency_key)
        return Dataset.model_validate(response.json())

    def get(self, dataset: str | Dataset) -> Dataset:
        return self._c._get(f"/v1/datasets/{id_of(dataset)}", Dataset)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[Dataset]:
        """Every dataset, newest first (pages fetched as you iterate); at most ``limit``."""
        return self._c._pages("/v1/datasets", Dataset, {"limit": page_size}, limit)

    def delete(self, dataset: str | Dataset) -> None:
        """Delete a dataset and its files (``Conflict`` dataset_in_use while a queued or running job uses it)."""
        self._c.request("DELETE", f"/v1/datasets/{id_of(dataset)}")


class Uploads:
    """``client.uploads``: the multipart upload API call by call (``datasets.upload`` drives it for a large
    dataset: create, put the parts, complete)."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self, filename: str, size: int, *, sha256: str | None = None, idempotency_key: str | None = None
    ) -> Upload:
        """Begin an upload of ``size`` bytes (the API's ``bytes``); ``sha256`` (hex) of the whole file is
        checked at completion. The answer names the part size and the number of parts."""
        body = {"filename": filename, "bytes": size, "sha256": sha256}
        response = self._c.request("POST", "/v1/uploads", json=body, idempotency_key=idempotency_key)
        return Upload.model_validate(response.json())

    def put_part(
        self, upload: str | Upload, number: int, data: bytes, *, sha256: str | None = None
    ) -> UploadPart:
        """Send part ``number`` (from 1; ``part_size`` bytes, the last one the rest), checked by the server
        against its SHA-256 (computed here when not given). Sending a part again replaces it."""
        headers = {
            "Content-Type": "application/octet-stream",
            CHECKSUM_HEADER: sha256 or hashlib.sha256(data).hexdigest(),
        }
        path = f"/v1/uploads/{id_of(upload)}/parts/{number}"
        response = self._c.request("PUT", path, body=lambda: {"content": data}, headers=headers)
        return UploadPart.model_validate(response.json())

    def get(self, upload: str | Upload) -> Upload:
        return self._c._get(f"/v1/uploads/{id_of(upload)}", Upload)

    def list(self, *, limit: int | None = None, page_size: int = 50) -> Iterator[Upload]:
        """Pending uploads, newest first (pages fetched as you iterate); at most ``limit``."""
        return self._c._pages("/v1/uploads", Upload, {"limit": page_size}, limit)

    def complete(self, upload: str | Upload, name: str, *, idempotency_key: str | None = None) -> Dataset:
        """Make the dataset ``name`` of the received parts (``Conflict`` upload_incomplete names the missing
        ones; an archive the server refuses raises its code, and the upload is gone)."""
        path = f"/v1/uploads/{id_of(upload)}/complete"
        # The server checks and extracts the whole file before it answers (about 45 s for 2 GB on 2 cores): wait
        # for it rather than time out and retry into "still being processed".
        response = self._c.request(
            "POST", path, json={"name": name}, idempotency_key=idempotency_key, timeout=COMPLETE_TIMEOUT
        )
        return Dataset.model_validate(response.json())

    def abort(self, upload: str | Upload) -> None:
        """Abandon an upload; the server drops its parts."""
        self._c.request("DELETE", f"/v1/uploads/{id_of(upload)}")

    # --- the resumable upload of ``datasets.upload`` -------------------------------------------------------
    def _send(
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
        state = self._state(store, source, resume, progress)
        cb, close_bar = progress_callback(progress, f"upload {source.filename}")
        tally = Tally(state.size, cb)
        try:
            for round_ in (1, 2):  # a second round only when the upload expired while its parts were sent
                opened = self._open(state, store)
                if isinstance(opened, Dataset):
                    store.clear(state)
                    return opened
                try:
                    self._fill(opened, state, store, tally, parallel)
                    return self._finish(opened, state, store, name, idempotency_key, tally, parallel)
                except (NotFound, Gone):
                    if round_ == 2:
                        raise
                    log.warning("upload %s is gone from the server; starting it again", state.upload_id)
                    state.forget_upload()
                    store.save(state)
            raise AssertionError("unreachable")
        finally:
            close_bar()

    def _state(
        self, store: StateStore, source: Source, resume: bool, progress: bool | Progress | None
    ) -> UploadState:
        """The state of an earlier attempt on this source (unless ``resume`` is False: then that attempt is
        aborted on the server), else a new one, for which the file is hashed."""
        key = state_key(self._c.base_url, source)
        state = store.load(key)
        if state is not None and resume:
            return state
        if state is not None:
            if state.upload_id:
                with contextlib.suppress(APIError):
                    self.abort(state.upload_id)
            store.clear(state, archive=False)
        cb, close_bar = progress_callback(True if progress is True else None, f"sha256 {source.filename}")
        try:
            return store.new(key, self._c.base_url, source, cb)
        finally:
            close_bar()

    def _open(self, state: UploadState, store: StateStore) -> Upload | Dataset:
        """The upload to continue: the state's, if the server still has it; else the dataset it became (an
        earlier complete whose answer was lost, asked again with its key); else a new upload."""
        if state.upload_id:
            try:
                upload = self.get(state.upload_id)
                if state.matches(upload):
                    state.attach(upload)
                    store.save(state)
                    return upload
            except (NotFound, Gone):
                if state.complete_key and state.complete_name:
                    with contextlib.suppress(NotFound, Gone):
                        return self.complete(
                            state.upload_id, state.complete_name, idempotency_key=state.complete_key
                        )
            state.forget_upload()
            store.save(state)
        upload = self.create(
            state.filename, state.size, sha256=state.sha256, idempotency_key=state.create_key
        )
        state.attach(upload)
        store.save(state)
        return upload

    def _fill(
        self, upload: Upload, state: UploadState, store: StateStore, tally: Tally, parallel: int
    ) -> None:
        """Send, ``parallel`` at once, the parts the server does not hold with the SHA-256 of ours."""
        parts = plan_parts(upload.bytes, upload.part_size)
        if len(parts) != upload.parts_total:
            raise SaftClientError(
                f"upload {upload.id}: {upload.parts_total} parts announced, {len(parts)} planned"
            )
        file = Path(state.file)
        for part in state.unhashed(upload):
            store.record(state, part.number, sha256_of(file, part.offset, part.size))
        todo = parts_to_send(parts, upload, state.hashes)
        tally.start(state.size - sum(p.size for p in todo))
        if not todo:
            return
        # Set when the upload is abandoned: the parts in flight stop at their next chunk.
        stop = threading.Event()
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(parallel, len(todo))), thread_name_prefix="saft-upload"
        )
        try:
            futures = [pool.submit(self._put, upload.id, part, state, store, tally, stop) for part in todo]
            for future in as_completed(futures):
                future.result()  # the first failure (or an interrupt while waiting) ends the upload
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _put(
        self,
        upload_id: str,
        part: Part,
        state: UploadState,
        store: StateStore,
        tally: Tally,
        stop: threading.Event,
    ) -> None:
        """Send one part, retried alone: by ``request`` on connection errors and 429/5xx, here on a checksum
        the server found different (rehashed from the file first, in case it changed)."""
        body = PartBody(Path(state.file), part, tally, stop)
        path = f"/v1/uploads/{upload_id}/parts/{part.number}"
        sha = state.hashes.get(part.number)
        for attempt in range(self._c.retry.max_retries + 1):
            if stop.is_set():
                raise UploadStopped("the upload was stopped")
            sha = sha if sha and attempt == 0 else sha256_of(body.file, part.offset, part.size)
            try:
                answer = self._c.request("PUT", path, body=body.sync, headers=body.headers(sha)).json()
            except ValidationError as e:
                if e.code != "checksum_mismatch" or attempt == self._c.retry.max_retries:
                    raise
                log.warning("%s: the server read another checksum; sending it again", path)
                continue
            if UploadPart.model_validate(answer).sha256 != sha:
                raise SaftClientError(f"{path}: the server holds SHA-256 {answer['sha256']}, not {sha}")
            store.record(state, part.number, sha)
            return

    def _finish(
        self,
        upload: Upload,
        state: UploadState,
        store: StateStore,
        name: str,
        idempotency_key: str | None,
        tally: Tally,
        parallel: int,
    ) -> Dataset:
        """Complete the upload into a dataset. Missing parts (``upload_incomplete``) are sent and a whole-file
        checksum mismatch repaired (every part rehashed, the differing ones resent), once; after an archive
        refusal the server has dropped the upload, and so is the state."""
        key = state.complete_key_for(name, idempotency_key)
        store.save(state)
        for attempt in (1, 2):
            try:
                dataset = self.complete(upload.id, name, idempotency_key=key)
            except (NotFound, Gone):
                raise  # the upload expired: a new one is begun
            except APIError as e:
                if attempt == 2 or e.code not in REPAIRABLE:
                    self._forget_if_gone(state, store)
                    raise
                if e.code == "checksum_mismatch":
                    state.hashes = {}  # every part rehashed from the file; those the server holds otherwise, resent
            else:
                store.clear(state)
                return dataset
            upload = self.get(upload.id)
            self._fill(upload, state, store, tally, parallel)
        raise AssertionError("unreachable")

    def _forget_if_gone(self, state: UploadState, store: StateStore) -> None:
        """After a refused complete: drop the state if the server dropped the upload (an archive refusal)."""
        try:
            self.get(state.upload_id or "")
        except (NotFound, Gone):
            store.clear(state)


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
        batch_size=32, validation_fraction=0.2, model="saft-tiny", templates=[...], metadata={...}, priority="high"`` (the
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

    def events(self, job: str | Job, *, after: int = 0) -> builtins.list[JobEvent]:  # builtins: the method list() shadows the type
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

    def evaluations(self, job: str | Job) -> builtins.list[Evaluation]:
        data = self._c.request("GET", f"/v1/jobs/{id_of(job)}/evaluations").json()["data"]
        return [Evaluation.model_validate(e) for e in data]

    def mask(self, job: str | Job) -> Mask:
        return self._c._get(f"/v1/jobs/{id_of(job)}/mask", Mask)

    def download_checkpoint(
        self,
        job: str | Job,
        path: str | os.PathLike[str],
        *,
        progress: bool | Progress | None = None,
        overwrite: bool = True,
    ) -> Path:
        """Download the sparse checkpoint to ``path`` (SHA-256 verified, written atomically, with the mode a new file
        gets); returns it. ``overwrite=False`` raises ``FileExistsError`` if ``path`` exists."""
        return self._c._download(f"/v1/jobs/{id_of(job)}/checkpoint", path, progress, overwrite)

    def download_mask(
        self,
        job: str | Job,
        path: str | os.PathLike[str],
        *,
        progress: bool | Progress | None = None,
        overwrite: bool = True,
    ) -> Path:
        """Download the mask file to ``path`` (SHA-256 verified, written atomically, with the mode a new file
        gets); returns it. ``overwrite=False`` raises ``FileExistsError`` if ``path`` exists."""
        return self._c._download(f"/v1/jobs/{id_of(job)}/mask/file", path, progress, overwrite)
