"""A corpus of hostile requests against the real stack (API, worker, Postgres, Redis): archives, images,
templates, JSON, ids, headers and keys. Each must answer 4xx ``application/problem+json`` with the code that
names what is wrong, show no server path, and leave nothing behind (no new rows, no new files); the API's memory
stays bounded over the whole corpus (measured, printed, and held to a generous bound).
"""

from __future__ import annotations

import base64
import io
import json
import random
import socket
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from PIL import Image

from tests.fixtures.stack import Stack, wait_for_job, zip_dir

pytestmark = pytest.mark.service

PROBLEM = "application/problem+json"
# The API process may grow by this much over the whole corpus (decoding one of its images whole would take
# gigabytes; the allocator keeps some of what a request used, so the bound is not zero).
RSS_BOUND = 400 * 1024 * 1024


# --- building hostile inputs ------------------------------------------------------------------------------


def png(size: tuple[int, int] = (8, 8), colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 12_000) -> bytes:
    """A real 1-bit PNG of side x side pixels (144 MP by default) that compresses to a few KB."""
    raw = (b"\x00" + bytes((side + 7) // 8)) * side
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a tiny, truncated body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header is patched to claim width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = data.index(b"\x2c")  # image descriptor
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def zip_of(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def dataset_zip(extra: dict[str, bytes] | None = None, *, classes: tuple[str, ...] = ("cat", "dog")) -> bytes:
    """A valid two-class dataset plus ``extra`` entries."""
    entries = {f"{c}/{i}.png": png(colour=colour) for c, colour in zip(classes, ("red", "blue"), strict=False)
               for i in range(2)}
    return zip_of({**entries, **(extra or {})})


def tar_of(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in members:
            payload = (data or {}).get(m.name)
            if payload is not None:
                m.size = len(payload)
            tf.addfile(m, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def compressed_tar(compression: str, *, padding: int) -> bytes:
    """A dataset tar compressed with ``compression`` (bz2, xz), with ``padding`` random bytes in one member, so
    it can be made smaller or larger than a tar block (512 bytes)."""
    members = {"cat/1.png": png(), "dog/1.png": png(colour="blue")}
    if padding:
        members["cat/pad.png"] = random.Random(0).randbytes(padding)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_link() -> bytes:
    link = tarfile.TarInfo("cat/1.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return tar_of([link])


def tar_fifo() -> bytes:
    fifo = tarfile.TarInfo("cat/1.png")
    fifo.type = tarfile.FIFOTYPE
    return tar_of([fifo])


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- the corpus -------------------------------------------------------------------------------------------


@dataclass
class Hostile:
    """One hostile request and what it must answer."""

    id: str
    method: str
    path: str
    status: int
    code: str
    kwargs: Callable[[], dict[str, Any]] = field(default=lambda: {})
    auth: bool = True
    detail: str | None = None  # a text the problem's detail must contain


def upload(archive: bytes | Callable[[], bytes], name: str = "hostile", filename: str = "d.zip") -> Callable[[], dict]:
    return lambda: {
        "data": {"name": name},
        "files": {"file": (filename, archive() if callable(archive) else archive)},
    }


def classify(images: list[bytes] | None = None, **form: str) -> Callable[[], dict]:
    imgs = images if images is not None else [png()]
    return lambda: {
        "data": {"labels": '["cat", "dog"]', **form},
        "files": [("images", (f"{i}.png", b)) for i, b in enumerate(imgs)],
    }


def job(**change: Any) -> Callable[[], dict]:
    return lambda: {"json": {"dataset_id": "ds_0123456789abcdef01234567", **change}}


def raw_job(text: str) -> Callable[[], dict]:
    return lambda: {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


D, C, J = "/v1/datasets", "/v1/classify", "/v1/jobs"
JOB = "{job}"  # replaced by a real job of the tenant (so range checks are reached, not a 404)

CORPUS: list[Hostile] = [
    # keys and headers
    Hostile("no-key-upload", "POST", D, 401, "unauthorized", upload(dataset_zip()), auth=False),
    Hostile("no-key-list", "GET", J, 401, "unauthorized", auth=False),
    Hostile("bad-key-upload", "POST", D, 401, "invalid_api_key",
            lambda: {**upload(dataset_zip())(), "headers": {"Authorization": "Bearer saft_not_a_key"}}, auth=False),
    Hostile("basic-auth", "POST", J, 401, "unauthorized",
            lambda: {**job()(), "headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, auth=False),
    Hostile("huge-key", "GET", J, 401, "invalid_api_key",
            lambda: {"headers": {"Authorization": "Bearer " + "k" * 8000}}, auth=False),
    Hostile("key-with-nul-escape", "POST", C, 401, "invalid_api_key",
            lambda: {**classify()(), "headers": {"Authorization": "Bearer saft_%00x"}}, auth=False),
    # archives
    Hostile("not-an-archive", "POST", D, 415, "unsupported_archive", upload(b"just some text" * 100)),
    # .tar.bz2 and .tar.xz: refused whatever their size (one rule), saying why
    *[
        Hostile(f"tar-{comp}-{size}", "POST", D, 415, "unsupported_archive",
                upload(lambda comp=comp, pad=pad: compressed_tar(comp, padding=pad), filename=f"d.tar.{comp}"),
                detail=f"(.tar.{comp}) compressed archives are not accepted")
        for comp in ("bz2", "xz")
        for size, pad in (("small", 0), ("large", 4096))
    ],
    Hostile("zip-slip", "POST", D, 422, "unsafe_archive", upload(lambda: dataset_zip({"../evil.png": png()}))),
    Hostile("absolute-entry", "POST", D, 422, "unsafe_archive", upload(lambda: dataset_zip({"/etc/x.png": png()}))),
    Hostile("backslash-entry", "POST", D, 422, "unsafe_archive",
            upload(lambda: dataset_zip({"cat\\..\\..\\x.png": png()}))),
    Hostile("zip-symlink", "POST", D, 422, "unsafe_archive", upload(lambda: zip_of({}, symlink="cat/1.png"))),
    Hostile("tar-symlink", "POST", D, 422, "unsafe_archive", upload(tar_link, filename="d.tar")),
    Hostile("tar-fifo", "POST", D, 422, "unsafe_archive", upload(tar_fifo, filename="d.tar")),
    Hostile("too-many-members", "POST", D, 413, "too_many_files",
            upload(lambda: zip_of({f"c{i % 2}/{i}.png": b"" for i in range(301)}))),
    Hostile("zip-bomb", "POST", D, 413, "archive_too_large",
            upload(lambda: dataset_zip({"cat/bomb.png": bytes(5 * 1024 * 1024)}))),
    Hostile("truncated-zip", "POST", D, 422, "corrupt_archive", upload(lambda: dataset_zip()[:-30])),
    Hostile("classes-json-huge", "POST", D, 413, "classes_file_too_large",
            upload(lambda: dataset_zip({"classes.json": b"{" + b" " * (1024 * 1024 + 10) + b"}"}))),
    Hostile("classes-json-deep", "POST", D, 422, "json_too_deep",
            upload(lambda: dataset_zip({"classes.json": deep(100_000).encode()}))),
    Hostile("classes-json-control", "POST", D, 422, "control_characters",
            upload(lambda: dataset_zip({"classes.json": json.dumps({"cat": "c\u202eat"}).encode()}))),
    Hostile("classes-json-long-name", "POST", D, 422, "class_name_too_long",
            upload(lambda: dataset_zip({"classes.json": json.dumps({"cat": "x" * 5000}).encode()}))),
    Hostile("classes-json-list", "POST", D, 422, "invalid_dataset",
            upload(lambda: dataset_zip({"classes.json": b'["cat", "dog"]'}))),
    Hostile("classes-json-nan", "POST", D, 422, "invalid_dataset",
            upload(lambda: dataset_zip({"classes.json": b'{"cat": NaN}'}))),
    Hostile("folder-name-long", "POST", D, 422, "class_name_too_long",
            upload(lambda: dataset_zip(classes=("c" * 250, "dog")))),
    Hostile("folder-name-control", "POST", D, 422, "control_characters",
            upload(lambda: dataset_zip(classes=("ca\x01t", "dog")))),
    Hostile("dataset-png-bomb", "POST", D, 422, "image_too_large",
            upload(lambda: dataset_zip({"cat/bomb.png": png_bomb()})),
            detail="the image is 144000000 pixels; the limit is 40000000"),
    Hostile("dataset-jpeg-claims", "POST", D, 422, "image_too_large",
            upload(lambda: dataset_zip({"dog/big.jpg": jpeg_claiming(60_000, 60_000)}))),
    Hostile("dataset-garbage-image", "POST", D, 422, "invalid_dataset",
            upload(lambda: dataset_zip({"cat/x.png": b"\x89PNG not really"}))),
    Hostile("one-class", "POST", D, 422, "invalid_dataset",
            upload(lambda: zip_of({"cat/1.png": png(), "cat/2.png": png()}))),
    Hostile("nested-folders", "POST", D, 422, "invalid_dataset", upload(lambda: dataset_zip({"cat/a/b.png": png()}))),
    Hostile("not-an-image-suffix", "POST", D, 422, "invalid_dataset", upload(lambda: dataset_zip({"cat/x.exe": b"MZ"}))),
    Hostile("duplicate-names", "POST", D, 422, "invalid_dataset", upload(lambda: dataset_zip({"CAT/0.PNG": png()}))),
    Hostile("name-with-nul", "POST", D, 422, "validation_error", upload(dataset_zip, name="a\x00b")),
    Hostile("name-with-newline", "POST", D, 422, "validation_error", upload(dataset_zip, name="a\nb")),
    Hostile("upload-without-file", "POST", D, 422, "validation_error", lambda: {"data": {"name": "x"}}),
    Hostile("upload-as-json", "POST", D, 422, "validation_error", lambda: {"json": {"name": "x", "file": "x"}}),
    # images and labels (classify)
    Hostile("classify-png-bomb", "POST", C, 422, "image_too_large", classify([png_bomb()] * 6),
            detail="the image is 144000000 pixels; the limit is 40000000 (SAFT_MAX_IMAGE_PIXELS)"),
    Hostile("classify-png-claims", "POST", C, 422, "image_too_large", classify([png_claiming(100_000, 100_000)])),
    Hostile("classify-jpeg-claims", "POST", C, 422, "image_too_large", classify([jpeg_claiming(65_000, 65_000)])),
    Hostile("classify-gif-claims", "POST", C, 422, "image_too_large", classify([gif_claiming(65_535, 65_535)])),
    Hostile("classify-empty-image", "POST", C, 422, "invalid_image", classify([b""])),
    Hostile("classify-garbage", "POST", C, 422, "invalid_image", classify([b"GIF89a garbage"])),
    Hostile("classify-too-many", "POST", C, 413, "too_many_images", classify([png((2, 2))] * 65)),
    Hostile("labels-deep", "POST", C, 422, "json_too_deep", classify(labels=deep(50_000))),
    Hostile("labels-not-json", "POST", C, 422, "invalid_labels", classify(labels="cat, dog")),
    Hostile("labels-too-many", "POST", C, 422, "too_many_labels",
            classify(labels=json.dumps([f"l{i}" for i in range(1001)]))),
    Hostile("label-too-long", "POST", C, 422, "label_too_long", classify(labels=json.dumps(["x" * 201, "y"]))),
    Hostile("label-nul", "POST", C, 422, "control_characters", classify(labels=json.dumps(["a\x00", "b"]))),
    Hostile("labels-nan", "POST", C, 422, "invalid_labels", classify(labels="[NaN]")),
    Hostile("classify-pretrained-path", "POST", C, 422, "model_not_allowed", classify(pretrained="/etc/passwd")),
    Hostile("classify-pretrained-escape", "POST", C, 422, "model_not_allowed",
            classify(pretrained="../../../../etc/hostname")),
    Hostile("classify-hf-hub", "POST", C, 422, "model_not_allowed", classify(model="hf-hub:laion/whatever")),
    Hostile("classify-unknown-model", "POST", C, 422, "unknown_model", classify(model="no-such-arch")),
    # a 428 M-parameter random model would be built and cached in the API process: refused from its size
    Hostile("classify-model-too-large", "POST", C, 422, "model_too_large",
            classify(model="ViT-L-14", pretrained="none"), detail="SAFT_CLASSIFY_MAX_PARAMS"),
    Hostile("classify-job-id-nul", "POST", C, 422, "validation_error", classify(job_id="job_\x00")),
    Hostile("classify-job-missing", "POST", C, 404, "job_not_found", classify(job_id="job_0123456789abcdef")),
    Hostile("classify-alpha-nan", "POST", C, 422, "validation_error", classify(job_id="job_01", alpha="nan")),
    Hostile("classify-top-k-huge", "POST", C, 422, "validation_error", classify(top_k=str(10**30))),
    # templates and job bodies
    Hostile("template-two-placeholders", "POST", J, 422, "validation_error", job(templates=["{} and {}"])),
    Hostile("template-no-placeholder", "POST", J, 422, "validation_error", job(templates=["{0:>999999999}"])),
    Hostile("template-format-spec", "POST", J, 422, "validation_error", job(templates=["{:>999999999}"])),
    Hostile("template-too-long", "POST", J, 422, "template_too_long", job(templates=["{}" + "x" * 400])),
    Hostile("templates-too-many", "POST", J, 422, "too_many_templates", job(templates=[f"{i} {{}}" for i in range(101)])),
    Hostile("template-control", "POST", J, 422, "control_characters", job(templates=["a\x00 {}"])),
    Hostile("metadata-too-large", "POST", J, 422, "metadata_too_large", job(metadata={"x": "y" * 9000})),
    Hostile("body-deep", "POST", J, 422, "json_too_deep", raw_job('{"metadata": {"a": ' + deep(100_000) + "}}")),
    Hostile("body-moderately-deep", "POST", J, 422, "json_too_deep", raw_job('{"metadata": {"a": ' + deep(20) + "}}")),
    Hostile("metadata-infinity", "POST", J, 422, "non_finite_number",
            raw_job('{"dataset_id": "ds_1", "metadata": {"a": Infinity}}')),
    Hostile("learning-rate-nan", "POST", J, 422, "validation_error",
            raw_job('{"dataset_id": "ds_1", "hyperparameters": {"learning_rate": NaN}}')),
    Hostile("grad-clip-infinity", "POST", J, 422, "validation_error",
            raw_job('{"dataset_id": "ds_1", "hyperparameters": {"grad_clip": Infinity}}')),
    Hostile("metadata-nul", "POST", J, 422, "nul_character", job(metadata={"a": "x\x00y"})),
    Hostile("metadata-key-nul", "POST", J, 422, "nul_character", job(metadata={"a\x00": 1})),
    Hostile("dataset-id-nul", "POST", J, 422, "validation_error", job(dataset_id="ds_\x00")),
    Hostile("job-pretrained-path", "POST", J, 422, "model_not_allowed", job(pretrained="/etc/passwd")),
    Hostile("job-pretrained-escape", "POST", J, 422, "model_not_allowed", job(pretrained="../../etc/hostname")),
    Hostile("job-hf-hub", "POST", J, 422, "model_not_allowed", job(model="hf-hub:laion/CLIP-ViT-B-32")),
    Hostile("seed-huge", "POST", J, 422, "validation_error", job(hyperparameters={"seed": 2**80})),
    Hostile("body-not-json", "POST", J, 422, "validation_error", raw_job("{not json")),
    Hostile("body-not-utf8", "POST", J, 422, "validation_error",
            lambda: {"content": b'{"dataset_id": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}}),
    Hostile("multipart-no-boundary", "POST", D, 400, "bad_request",
            lambda: {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}),
    Hostile("body-too-large", "POST", J, 413, "request_too_large",
            raw_job('{"metadata": {"a": "' + "x" * (1024 * 1024 + 1) + '"}}')),
    # ids, cursors, event numbers
    Hostile("job-id-nul", "GET", "/v1/jobs/job_%00x", 422, "validation_error"),
    Hostile("job-id-long", "GET", "/v1/jobs/" + "j" * 41, 422, "validation_error"),
    Hostile("dataset-id-dots", "GET", "/v1/datasets/..%2F..%2Fetc", 404, "not_found"),
    Hostile("dataset-id-quote", "GET", "/v1/datasets/ds_'%3B--", 422, "validation_error"),
    Hostile("events-after-2^63", "GET", f"/v1/jobs/{JOB}/events?after={2**63}", 422, "validation_error"),
    Hostile("events-after-negative", "GET", f"/v1/jobs/{JOB}/events?after=-1", 422, "validation_error"),
    Hostile("events-after-huge", "GET", f"/v1/jobs/{JOB}/events?after={10**30}", 422, "validation_error"),
    Hostile("stream-last-event-id-2^64", "GET", f"/v1/jobs/{JOB}/events/stream", 422, "validation_error",
            lambda: {"headers": {"Last-Event-ID": str(2**64)}}),
    Hostile("stream-after-2^63", "GET", f"/v1/jobs/{JOB}/events/stream?after={2**63}", 422, "validation_error"),
    Hostile("cursor-naive", "GET", f"/v1/jobs?cursor={cursor('2024-01-01T00:00:00|job_1')}", 422, "invalid_cursor"),
    Hostile("cursor-overflow", "GET", f"/v1/datasets?cursor={cursor('9999-12-31T23:59:59-14:00|ds_1')}", 422,
            "invalid_cursor"),
    Hostile("cursor-nul-id", "GET", f"/v1/jobs?cursor={cursor('2024-01-01T00:00:00+00:00|job_' + chr(0))}", 422,
            "invalid_cursor"),
    Hostile("cursor-garbage", "GET", "/v1/datasets?cursor=%%%%", 422, "invalid_cursor"),
    Hostile("limit-huge", "GET", f"/v1/jobs?limit={10**20}", 422, "validation_error"),
    Hostile("status-unknown", "GET", "/v1/jobs?status=exploded", 422, "validation_error"),
]


# --- what the service holds -------------------------------------------------------------------------------


def snapshot(stack: Stack) -> tuple[dict[str, int], set[str]]:
    """Row counts of the tenant-visible tables and every file under the data dir."""
    import psycopg

    url = stack.env["SAFT_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("datasets", "jobs", "job_events", "tenants", "api_keys")
        }
    files = {str(p.relative_to(stack.data_dir)) for p in stack.data_dir.rglob("*") if p.is_file()}
    return rows, files


def api_rss(stack: Stack) -> int:
    api = next(p for p in stack.procs if p.name == "api")
    proc = psutil.Process(api.popen.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


@pytest.fixture(scope="module")
def a_job(pg_stack: Stack, shapes_dir: Path) -> str:
    """A job of the tenant, cancelled at once, so that per-job routes reach their parameter checks."""
    with pg_stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "hostile-base"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
        assert r.status_code == 201, r.text
        r = c.post("/v1/jobs", json={"dataset_id": r.json()["id"], "hyperparameters": {"epochs": 1}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        c.post(f"/v1/jobs/{job_id}/cancel")
        wait_for_job(c, job_id, until={"cancelled", "failed", "succeeded"}, timeout=120)  # raises if it did not stop
        return job_id


@pytest.fixture(scope="module")
def rss_before(pg_stack: Stack, a_job: str) -> int:
    with pg_stack.client() as c:  # warm the routes once, so the first request's imports do not count
        c.get("/v1/jobs")
    return api_rss(pg_stack)


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_request_is_refused_and_leaves_nothing(
    pg_stack: Stack, a_job: str, rss_before: int, case: Hostile
) -> None:
    rows, files = snapshot(pg_stack)
    kwargs = case.kwargs()
    client = pg_stack.client() if case.auth else httpx.Client(base_url=pg_stack.base_url, timeout=120)
    with client as c:
        r = c.request(case.method, case.path.replace(JOB, a_job), **kwargs)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    problem = r.json()
    assert problem["code"] == case.code, problem
    assert problem["status"] == case.status and problem["detail"]
    if case.detail is not None:
        assert case.detail in problem["detail"], problem
    text = r.text
    assert str(pg_stack.data_dir) not in text and "staging" not in text, text
    assert snapshot(pg_stack) == (rows, files)


def test_corpus_is_large() -> None:
    assert len(CORPUS) >= 50


def read_reply(s: socket.socket) -> str:
    """What the server sends until it closes the connection (both answers close it)."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def refuse_large_uploads(pg_stack: Stack) -> list[float]:
    """A 100 MB upload without a key: 401 after a few KB were sent, not after the whole body; with a key, the
    declared size over the limit is 413, also before the body is read. The seconds each answer took."""
    seconds = []
    host, port = pg_stack.base_url.removeprefix("http://").split(":")
    total = 100 * 1024 * 1024
    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {total}\r\n"
    )
    for auth, status, code in [
        ("", 401, "unauthorized"),
        (f"Authorization: Bearer {pg_stack.keys['alpha']}\r\n", 413, "request_too_large"),
    ]:
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(f"{head}{auth}\r\n".encode() + b"--b\r\n" + b"x" * 4096)
            reply = read_reply(s)
        assert reply.startswith(f"HTTP/1.1 {status}"), reply
        assert PROBLEM in reply and f'"code":"{code}"' in reply, reply
        seconds.append(time.monotonic() - started)
    return seconds


def test_unauthenticated_large_upload_is_refused_before_it_is_read(pg_stack: Stack) -> None:
    """Only 4 KB of the declared 100 MB are sent: an answer at all means the body was not waited for."""
    assert len(refuse_large_uploads(pg_stack)) == 2


@pytest.mark.perf
def test_a_large_upload_is_refused_within_seconds(pg_stack: Stack) -> None:
    assert max(refuse_large_uploads(pg_stack)) < 10


def test_zz_api_memory_stays_bounded(pg_stack: Stack, rss_before: int) -> None:
    """Runs after the corpus (file order): the API process grew by less than RSS_BOUND over all of it."""
    after = api_rss(pg_stack)
    print(f"API RSS before the corpus {rss_before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
    assert after - rss_before < RSS_BOUND
    with pg_stack.client() as c:  # and it still serves
        assert c.get("/v1/datasets").status_code == 200
