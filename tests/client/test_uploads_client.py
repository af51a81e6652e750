"""The client's resumable multipart uploads, path imports and usage against the real service, on both stores.

The stacks cut uploads into parts of ``SAFT_UPLOAD_PART_BYTES`` (2 KiB in the tests) and the client switches to
the multipart API above a threshold set low here, so that a generated dataset of some tens of KiB goes in a
dozen parts or more. Interruptions are real: an exception raised from the progress callback in the middle of
the parts, and a TCP proxy that cuts the connection in the middle of a part's body."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from saft_client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Dataset,
    Forbidden,
    Gone,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    Upload,
    ValidationError,
)
from saft_client._uploads import plan_parts

from tests.fixtures.faults import CutProxy, FaultTransport
from tests.fixtures.remote import run_cli
from tests.fixtures.stack import Stack, render, second_api, stack_settings

pytestmark = pytest.mark.service

THRESHOLD = 4096  # bytes: the datasets here are far above it


class Interrupt(BaseException):
    """What Ctrl-C would raise, from inside the upload (not an Exception, so nothing may swallow it)."""


class Recording(FaultTransport):
    """The real transport, recording which thread sent each request."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[str, str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.threads.append((request.method, request.url.path, threading.current_thread().name))
        return super().handle_request(request)


def puts(transport: FaultTransport) -> list[tuple[str, int]]:
    """``(upload id, part number)`` of every part sent, in order."""
    out = []
    for method, path, _ in transport.seen:
        if method == "PUT":
            _, _, upload_id, _, number = path.strip("/").split("/")
            out.append((upload_id, int(number)))
    return out


def posts(transport: FaultTransport, suffix: str) -> int:
    return sum(1 for m, p, _ in transport.seen if m == "POST" and p.endswith(suffix))


def part_bytes(stack: Stack) -> int:
    return int(stack.env["SAFT_UPLOAD_PART_BYTES"])


@pytest.fixture(scope="session")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 20 generated images (some tens of KiB: a dozen parts and more)."""
    return render(tmp_path_factory.mktemp("big") / "big", per_class=20, seed=5)


def pending(c: Client, filename: str) -> list:
    return [u for u in c.uploads.list() if u.filename == filename]


def cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


def interrupted(stack: Stack, folder: Path, cache: Path) -> Upload:
    """Begin uploading ``folder`` and interrupt it halfway; the upload as the server holds it then."""

    def interrupt_halfway(done: int, total: int | None) -> None:
        if total and done > total // 2:
            raise Interrupt

    with Client(stack.base_url, stack.keys["alpha"]) as c:
        with pytest.raises(Interrupt):
            c.datasets.upload(folder, multipart_threshold=THRESHOLD, parallel=2, cache_dir=cache,
                              progress=interrupt_halfway)
        [upload] = pending(c, f"{folder.name}.zip")
    assert 0 < len(upload.parts) < upload.parts_total
    return upload


def expire(stack: Stack, upload_id: str) -> None:
    """Move an upload's expiry into the past, as time would."""
    from sqlalchemy import update

    from saft_service import db
    from saft_service.tables import Upload as UploadRow
    from saft_service.tables import utcnow

    with db.session_scope(stack_settings(stack)) as s:
        s.execute(update(UploadRow).where(UploadRow.id == upload_id).values(expires_at=utcnow() - timedelta(seconds=1)))


def test_large_folder_goes_in_parallel_checked_parts(stack: Stack, big_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    transport = Recording()
    progress: list[tuple[int, int | None]] = []
    with Client(stack.base_url, stack.keys["alpha"], transport=transport) as c:
        ds = c.datasets.upload(
            big_dir, name="big-parts", multipart_threshold=THRESHOLD, parallel=4, cache_dir=cache,
            progress=lambda done, total: progress.append((done, total)),
        )
        assert c.datasets.get(ds).counts == {cls: 20 for cls in ds.classes}
        assert not pending(c, "big.zip")
    assert ds.name == "big-parts" and ds.num_images == 60 and not ds.external
    size = progress[-1][1]
    assert size and progress[0] == (0, size) and progress[-1] == (size, size)
    sent = puts(transport)
    total = len(plan_parts(size, part_bytes(stack)))
    assert total >= 12 and sorted(n for _, n in sent) == list(range(1, total + 1))  # each part once, no form POST
    assert len({u for u, _ in sent}) == 1 and posts(transport, "/v1/datasets") == 0
    checksums = [h.get("X-Checksum-SHA256", "") for m, _, h in transport.seen if m == "PUT"]
    assert all(len(x) == 64 for x in checksums) and len(set(checksums)) == total
    threads = {name for m, _, name in transport.threads if m == "PUT"}
    assert len(threads) > 1 and all(name.startswith("saft-upload") for name in threads)  # in parallel
    assert cache_files(cache) == []  # the state and the folder's zip are gone once the dataset exists


def test_an_interrupted_upload_resumes_without_resending_received_parts(
    stack: Stack, big_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    folder = shutil.copytree(big_dir, tmp_path / "resumed")
    upload = interrupted(stack, folder, cache)
    held = {p.number for p in upload.parts}
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        assert c.usage().uploads_bytes >= upload.bytes  # the declared size is reserved while it is pending
    state_files = [f for f in cache_files(cache) if f.startswith("uploads/")]
    assert len(state_files) == 1 and json.loads((cache / state_files[0]).read_text())["upload_id"] == upload.id

    second = FaultTransport()
    with Client(stack.base_url, stack.keys["alpha"], transport=second) as c:
        ds = c.datasets.upload(folder, multipart_threshold=THRESHOLD, parallel=2, cache_dir=cache)
        with pytest.raises(NotFound) as gone:
            c.uploads.get(upload.id)  # completed into the dataset
    assert gone.value.code == "upload_not_found"
    assert ds.num_images == 60 and ds.name == "resumed"
    # The same upload went on (no new one), and only the parts the server lacked were sent.
    assert posts(second, "/v1/uploads") == 0
    resent = puts(second)
    assert {u for u, _ in resent} == {upload.id}
    assert sorted(n for _, n in resent) == sorted(set(range(1, upload.parts_total + 1)) - held)
    assert cache_files(cache) == []


@pytest.mark.parametrize("fate", ["expired", "aborted", "no-resume"])
def test_an_upload_the_server_lost_or_the_user_abandons_starts_anew(
    stack: Stack, big_dir: Path, tmp_path: Path, fate: str
) -> None:
    """Resuming an upload that expired (410) or was aborted (404) begins a new one; so does ``resume=False``,
    which aborts the old one on the server. Either way every part is sent, once."""
    cache = tmp_path / "cache"
    folder = shutil.copytree(big_dir, tmp_path / f"anew-{fate}")
    old = interrupted(stack, folder, cache)
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        if fate == "expired":
            expire(stack, old.id)
            with pytest.raises(Gone):
                c.uploads.get(old)
        elif fate == "aborted":
            c.uploads.abort(old)
    transport = FaultTransport()
    with Client(stack.base_url, stack.keys["alpha"], transport=transport) as c:
        ds = c.datasets.upload(folder, multipart_threshold=THRESHOLD, cache_dir=cache, resume=fate != "no-resume")
        with pytest.raises(NotFound):
            c.uploads.get(old)  # gone: expired, aborted, or (no-resume) aborted by the client
    assert ds.num_images == 60 and posts(transport, "/v1/uploads") == 1
    sent = puts(transport)
    assert {u for u, _ in sent} != {old.id} and sorted(n for _, n in sent) == list(range(1, old.parts_total + 1))
    assert cache_files(cache) == []


def test_a_lost_complete_answer_is_asked_again_not_repeated(stack: Stack, big_dir: Path, tmp_path: Path) -> None:
    """The server completes the upload but its answer is lost and the client gives up (no retries): the state
    keeps the complete's Idempotency-Key, so the next call gets that dataset back instead of a second one."""
    cache = tmp_path / "cache"
    folder = shutil.copytree(big_dir, tmp_path / "lost-answer")
    name = f"lost-answer-{secrets.token_hex(3)}"
    lossy = FaultTransport(lose={"/complete": 1})
    gives_up = Client(stack.base_url, stack.keys["alpha"], transport=lossy, retry=RetryPolicy(max_retries=0))
    with gives_up, pytest.raises(ConnectionFailed):
        gives_up.datasets.upload(folder, name=name, multipart_threshold=THRESHOLD, cache_dir=cache)
    transport = FaultTransport()
    with Client(stack.base_url, stack.keys["alpha"], transport=transport) as c:
        ds = c.datasets.upload(folder, name=name, multipart_threshold=THRESHOLD, cache_dir=cache)
        made = [d.id for d in c.datasets.list() if d.name == name]
    assert made == [ds.id] and ds.num_images == 60
    assert puts(transport) == [] and posts(transport, "/v1/uploads") == 0 and posts(transport, "/complete") == 1
    keys = [h["Idempotency-Key"] for m, p, h in lossy.seen + transport.seen if p.endswith("/complete")]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert cache_files(cache) == []


def test_a_cut_connection_retries_the_part_alone_and_a_dead_one_resumes_later(
    stack: Stack, big_dir: Path, tmp_path: Path
) -> None:
    """Through a TCP proxy that cuts the connection in the middle of a part's body: once (the part is retried
    alone), then for good (the upload fails, and resumes through the same URL once the service is back)."""
    cache = tmp_path / "cache"
    target = urlsplit(stack.base_url)
    with CutProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        one = shutil.copytree(big_dir, tmp_path / "cut-once")
        proxy.cut_after(5000)  # past the create, inside the second or third part
        transport = FaultTransport()
        with Client(proxy.url, stack.keys["alpha"], transport=transport, retry=RetryPolicy(backoff=0.05)) as c:
            ds = c.datasets.upload(one, multipart_threshold=THRESHOLD, parallel=1, cache_dir=cache)
        assert proxy.cuts == 1 and ds.num_images == 60
        numbers = [n for _, n in puts(transport)]
        assert len(numbers) == len(set(numbers)) + 1  # one part sent twice: the one cut
        assert sorted(set(numbers)) == list(range(1, max(numbers) + 1))

        down = shutil.copytree(big_dir, tmp_path / "cut-down")
        proxy.cut_after(9000, stay_down=True)
        dead = Client(proxy.url, stack.keys["alpha"], retry=RetryPolicy(max_retries=2, backoff=0.01))
        with dead, pytest.raises(ConnectionFailed):
            dead.datasets.upload(down, multipart_threshold=THRESHOLD, parallel=2, cache_dir=cache)
        with Client(stack.base_url, stack.keys["alpha"]) as direct:
            [upload] = pending(direct, "cut-down.zip")
        held = {p.number for p in upload.parts}
        assert 0 < len(held) < upload.parts_total
        proxy.heal()
        transport = FaultTransport()
        with Client(proxy.url, stack.keys["alpha"], transport=transport) as c:
            ds = c.datasets.upload(down, multipart_threshold=THRESHOLD, parallel=2, cache_dir=cache)
        assert ds.num_images == 60
        assert sorted(n for _, n in puts(transport)) == sorted(set(range(1, upload.parts_total + 1)) - held)
        assert posts(transport, "/v1/uploads") == 0


def test_a_refused_archive_raises_the_servers_code_and_is_forgotten(stack: Stack, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    junk = tmp_path / "junk.zip"
    junk.write_bytes(os.urandom(20_000))  # a .zip in name only
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        with pytest.raises(ValidationError) as refused:
            c.datasets.upload(junk, multipart_threshold=THRESHOLD, cache_dir=cache)
        assert refused.value.code == "unsupported_archive" and "deleted" in refused.value.detail
        assert not pending(c, "junk.zip")
    assert cache_files(cache) == [] and junk.exists()  # the state forgotten; the user's file untouched


def test_low_level_calls(stack: Stack, shapes_zip: bytes) -> None:
    data = shapes_zip
    size = part_bytes(stack)
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        upload = c.uploads.create("shapes.zip", len(data), sha256=hashlib.sha256(data).hexdigest())
        assert upload.part_size == size and upload.parts_total == len(plan_parts(len(data), size)) > 2
        assert upload.parts == [] and upload.status == "pending" and upload.expires_at > upload.created_at
        chunks = [data[p.offset : p.offset + p.size] for p in plan_parts(len(data), size)]
        for n in range(upload.parts_total, 1, -1):  # any order; the first last
            got = c.uploads.put_part(upload, n, chunks[n - 1])
            assert got.number == n and got.sha256 == hashlib.sha256(chunks[n - 1]).hexdigest()
        with pytest.raises(ValidationError) as bad:
            c.uploads.put_part(upload, 1, chunks[0], sha256="0" * 64)
        assert bad.value.code == "checksum_mismatch"
        now = c.uploads.get(upload)
        assert now.missing == [1] and now.bytes_received == len(data) - len(chunks[0])
        assert upload.id in [u.id for u in c.uploads.list(page_size=1)]
        with pytest.raises(Conflict) as incomplete:
            c.uploads.complete(upload, "low-level")
        assert incomplete.value.code == "upload_incomplete" and incomplete.value.problem["missing_parts"] == [1]
        c.uploads.put_part(upload, 1, chunks[0])
        ds = c.uploads.complete(upload, "low-level")
        assert isinstance(ds, Dataset) and ds.num_images == 18 and ds.name == "low-level"
        other = c.uploads.create("other.zip", 10)
        c.uploads.abort(other)
        with pytest.raises(NotFound):
            c.uploads.get(other)
    with Client(stack.base_url, stack.keys["beta"]) as c, pytest.raises(NotFound):
        c.uploads.get(upload)  # another tenant's


def test_import_by_server_path(stack: Stack, shapes_dir: Path, tmp_path: Path) -> None:
    assert stack.import_root is not None
    inside = shutil.copytree(shapes_dir, stack.import_root / f"shapes-{secrets.token_hex(3)}")
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        before = c.usage()
        ds = c.datasets.import_path(str(inside))
        assert ds.external and ds.source_path == str(inside) and ds.name == inside.name and ds.num_images == 18
        after = c.usage()
        assert after.datasets_bytes == before.datasets_bytes  # the operator's files: not counted
        named = c.datasets.import_path(inside, "named")  # a Path is taken as well
        assert named.name == "named" and named.id != ds.id
        with pytest.raises(ValidationError) as outside:
            c.datasets.import_path(str(tmp_path))
        assert outside.value.code == "path_not_allowed"
        c.datasets.delete(ds)
        c.datasets.delete(named)
    assert sorted(p.name for p in inside.iterdir()) == sorted(p.name for p in shapes_dir.iterdir())  # untouched


def test_usage_and_the_quota(stack: Stack, big_dir: Path, tmp_path: Path) -> None:
    """On a second API of the stack with a storage quota just above what the tenant stores, and no import
    roots: usage shows the quota, an upload that does not fit is refused at its start (and can be tried
    again), an import is refused as disabled."""
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        used = c.usage()
    assert used.storage_quota_bytes is None
    assert used.storage_bytes == used.datasets_bytes + used.uploads_bytes + used.jobs_bytes
    quota = used.storage_bytes + 10_000
    with second_api(stack, "api-quota", SAFT_TENANT_STORAGE_BYTES=str(quota), SAFT_IMPORT_ROOTS="") as small:
        with Client(small.base_url, small.keys["alpha"]) as c:
            assert c.usage().storage_quota_bytes == quota
            with pytest.raises(PayloadTooLarge) as full:
                c.datasets.upload(big_dir, multipart_threshold=THRESHOLD, cache_dir=tmp_path / "cache")
            assert full.value.code == "storage_quota_exceeded"
            with pytest.raises(Forbidden) as disabled:
                c.datasets.import_path("/data/anything")
            assert disabled.value.code == "imports_disabled"
        out = run_cli(small, "usage")
        assert out.returncode == 0 and "used of" in out.stdout and "pending uploads" in out.stdout


def test_async_client(stack: Stack, big_dir: Path, shapes_zip: bytes, tmp_path: Path) -> None:
    folder = shutil.copytree(big_dir, tmp_path / "async-big")

    async def main() -> tuple:
        async with AsyncClient(stack.base_url, stack.keys["alpha"]) as c:
            progress: list[tuple[int, int | None]] = []
            ds = await c.datasets.upload(
                folder, multipart_threshold=THRESHOLD, parallel=3, cache_dir=tmp_path / "cache",
                progress=lambda d, t: progress.append((d, t)),
            )
            upload = await c.uploads.create("shapes.zip", len(shapes_zip))
            chunks = plan_parts(len(shapes_zip), upload.part_size)
            await asyncio.gather(*(
                c.uploads.put_part(upload, p.number, shapes_zip[p.offset : p.offset + p.size]) for p in chunks
            ))
            listed = [u.id async for u in c.uploads.list()]
            held = await c.uploads.get(upload)
            small = await c.uploads.complete(upload, "async-low-level")
            aborted = await c.uploads.create("x.zip", 5)
            await c.uploads.abort(aborted)
            try:
                await c.uploads.get(aborted)
            except NotFound as e:
                code = e.code
            usage = await c.usage()
            return ds, progress, listed, held, small, code, usage, upload

    ds, progress, listed, held, small, code, usage, upload = asyncio.run(main())
    assert ds.num_images == 60 and ds.name == "async-big"
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1]
    assert upload.id in listed and held.missing == [] and small.num_images == 18
    assert code == "upload_not_found" and usage.datasets_bytes >= ds.size_bytes + small.size_bytes
    assert cache_files(tmp_path / "cache") == []


def test_cli_upload_import_and_usage(stack: Stack, big_dir: Path, shapes_dir: Path, tmp_path: Path) -> None:
    # tqdm draws on every update (not every 0.1 s), so that a short upload shows its rate and ETA too.
    env = {"SAFT_CACHE_DIR": str(tmp_path / "cache"), "TQDM_MININTERVAL": "0"}
    folder = shutil.copytree(big_dir, tmp_path / "cli-big")
    out = run_cli(stack, "datasets", "upload", str(folder), "--multipart-threshold", "4K", "--json", env=env)
    assert out.returncode == 0, out.stderr
    ds = json.loads(out.stdout.strip().splitlines()[-1])
    assert ds["num_images"] == 60 and ds["name"] == "cli-big"
    assert out.stderr == ""  # --json: no bar
    # Without --json: a bar with bytes, rate and ETA on stderr, the dataset on stdout.
    shown = run_cli(stack, "datasets", "upload", str(folder), "--multipart-threshold", "4K", "--name", "bar", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "upload cli-big.zip" in shown.stderr
    assert re.search(r"\d[\d.]*[kMG]?B/s", shown.stderr) and re.search(r"<\d\d:\d\d", shown.stderr), shown.stderr
    assert shown.stdout.startswith("ds_") and "bar: 60 images, 3 classes" in shown.stdout
    assert stack.import_root is not None
    inside = shutil.copytree(shapes_dir, stack.import_root / f"cli-{secrets.token_hex(3)}")
    imported = run_cli(stack, "datasets", "import", "--path", str(inside), "--name", "in-place", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["external"] is True
    human = run_cli(stack, "datasets", "import", "--path", str(inside))
    assert human.returncode == 0 and f"(read from {inside} on the server)" in human.stdout
    refused = run_cli(stack, "datasets", "import", "--path", str(tmp_path), "--json")
    assert refused.returncode == 2 and json.loads(refused.stdout)["error"]["code"] == "path_not_allowed"
    usage = run_cli(stack, "usage", "--json")
    assert usage.returncode == 0 and json.loads(usage.stdout)["storage_quota_bytes"] is None
    human = run_cli(stack, "usage")
    assert human.returncode == 0 and "(no quota)" in human.stdout
    assert cache_files(tmp_path / "cache") == []
