"""Dataset uploads: the archive checks on their own, then bad uploads over HTTP leaving nothing behind."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from saft_service.archives import Limits, UploadError, extract_archive
from saft_service.settings import Settings
from tests.fixtures.stack import Stack, stored_datasets, zip_dir

LIMITS = Limits.of(Settings(max_archive_members=50, max_extracted_bytes=1 << 20))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # a name-valid entry; decoding is checked later by the core


def make_zip(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    buf.seek(0)
    return buf


def make_tar(
    entries: dict[str, bytes], *, links: dict[str, tuple[bytes, str]] | None = None, mode: str = "w:gz"
) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    buf.seek(0)
    return buf


GOOD = {"cat/1.png": PNG, "cat/2.png": PNG, "dog/1.jpg": PNG, "classes.json": b'{"cat": "cat", "dog": "dog"}'}


def make_plain_tar(entries: dict[str, bytes]) -> io.BytesIO:
    return make_tar(entries, mode="w")


@pytest.mark.parametrize("maker", [make_zip, make_tar, make_plain_tar], ids=["zip", "tar.gz", "tar"])
def test_good_archive_extracts_in_imagefolder_layout(maker, tmp_path: Path) -> None:
    size = extract_archive(maker(GOOD), tmp_path / "out", LIMITS)
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert files == ["cat/1.png", "cat/2.png", "classes.json", "dog/1.jpg"]
    assert size == sum(len(v) for v in GOOD.values())


def test_one_wrapping_folder_and_archiver_junk_are_dropped(tmp_path: Path) -> None:
    entries = {f"pets/{k}": v for k, v in GOOD.items()}
    entries |= {"__MACOSX/pets/._cat": b"x", "pets/.DS_Store": b"x", "pets/cat/._1.png": b"x"}
    extract_archive(make_zip(entries), tmp_path / "out", LIMITS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat", "classes.json", "dog"]


@pytest.mark.parametrize(
    ("archive", "code", "words"),
    [
        (lambda: make_zip({"../evil/1.png": PNG, **GOOD}), "unsafe_archive", "escapes"),
        (lambda: make_zip({"/etc/cron.d/1.png": PNG}), "unsafe_archive", "absolute"),
        (lambda: make_zip({"cat\\1.png": PNG}), "unsafe_archive", "backslash"),
        (lambda: make_zip(GOOD, symlinks={"cat/link.png": "/etc/passwd"}), "unsafe_archive", "link"),
        (
            lambda: make_tar(GOOD, links={"cat/l.png": (tarfile.SYMTYPE, "/etc/passwd")}),
            "unsafe_archive",
            "link",
        ),
        (
            lambda: make_tar(GOOD, links={"cat/h.png": (tarfile.LNKTYPE, "cat/1.png")}),
            "unsafe_archive",
            "link",
        ),
        (lambda: make_tar(GOOD, links={"cat/fifo": (tarfile.FIFOTYPE, "")}), "unsafe_archive", "regular"),
        (lambda: make_zip({**GOOD, "notes.txt": b"hi"}), "invalid_dataset", "ImageFolder"),
        (lambda: make_zip({**GOOD, "cat/notes.txt": b"hi"}), "invalid_dataset", "not an image"),
        (lambda: make_zip({"a/b/c/1.png": PNG, "x/y/1.png": PNG}), "invalid_dataset", "ImageFolder"),
        (
            lambda: make_zip({"cat/1.png": PNG, "Cat/1.PNG": PNG, "dog/1.png": PNG}),
            "invalid_dataset",
            "twice",
        ),
        (lambda: make_zip({}), "invalid_dataset", "no files"),
        (lambda: make_zip({f"c{i % 2}/{i}.png": PNG for i in range(60)}), "too_many_files", "limit"),
        (
            lambda: make_zip({"cat/1.png": b"\0" * (LIMITS.max_bytes + 1), "dog/1.png": PNG}),
            "archive_too_large",
            "",
        ),
        (lambda: io.BytesIO(b"just some text, not an archive" * 30), "unsupported_archive", "not a .zip"),
        (lambda: io.BytesIO(make_zip(GOOD).getvalue()[:60]), "corrupt_archive", ""),
    ],
    ids=[
        "dotdot",
        "absolute",
        "backslash",
        "zip-symlink",
        "tar-symlink",
        "tar-hardlink",
        "tar-fifo",
        "stray-file",
        "not-image",
        "too-deep",
        "duplicate",
        "empty",
        "too-many",
        "too-big",
        "not-archive",
        "truncated",
    ],
)
def test_bad_archives_are_refused_with_a_reason(archive, code: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(UploadError) as err:
        extract_archive(archive(), tmp_path / "out", LIMITS)
    assert err.value.code == code
    assert words in err.value.message
    assert 400 <= err.value.status < 500
    # Nothing outside the staging folder was touched.
    assert {p.name for p in tmp_path.iterdir()} <= {"out"}


# --- over HTTP ---------------------------------------------------------------------------------------------


@pytest.mark.service
class TestBadUploadsOverHTTP:
    """Each refused upload answers 4xx problem+json with a code, stores nothing, and the service keeps serving."""

    def _refused(self, stack: Stack, files: dict, data: dict | None, status: int, code: str) -> dict:
        before = stored_datasets(stack)
        with stack.client() as c:
            n_before = len(c.get("/v1/datasets", params={"limit": 100}).json()["data"])
            r = c.post("/v1/datasets", data=data if data is not None else {"name": "bad"}, files=files)
            assert r.status_code == status, r.text
            assert r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["code"] == code and body["status"] == status and body["detail"]
            assert len(c.get("/v1/datasets", params={"limit": 100}).json()["data"]) == n_before
            assert c.get("/healthz").status_code == 200
        assert stored_datasets(stack) == before
        return body

    def test_zip_slip(self, pg_stack: Stack) -> None:
        body = self._refused(
            pg_stack, {"file": ("x.zip", make_zip({"../../x/1.png": PNG}))}, None, 422, "unsafe_archive"
        )
        assert "escapes" in body["detail"]

    def test_undecodable_image(self, pg_stack: Stack, shapes_dir: Path) -> None:
        data = zip_dir(shapes_dir)
        buf = io.BytesIO(data)
        with zipfile.ZipFile(buf, "a") as zf:
            zf.writestr("red_circle/broken.png", b"this is not a png")
        body = self._refused(pg_stack, {"file": ("x.zip", buf.getvalue())}, None, 422, "invalid_dataset")
        assert "broken.png" in body["detail"]

    def test_one_class_is_not_a_dataset(self, pg_stack: Stack, shapes_dir: Path) -> None:
        one = {f"red/{p.name}": p.read_bytes() for p in (shapes_dir / "red_circle").iterdir()}
        self._refused(pg_stack, {"file": ("x.zip", make_zip(one))}, None, 422, "invalid_dataset")

    def test_not_an_archive(self, pg_stack: Stack) -> None:
        self._refused(pg_stack, {"file": ("x.zip", b"hello" * 200)}, None, 415, "unsupported_archive")

    def test_over_the_upload_limit(self, pg_stack: Stack) -> None:
        big = b"\0" * (int(pg_stack.env["SAFT_MAX_UPLOAD_BYTES"]) + 1)
        body = self._refused(pg_stack, {"file": ("big.zip", big)}, None, 413, "request_too_large")
        assert pg_stack.env["SAFT_MAX_UPLOAD_BYTES"] in body["detail"]

    def test_missing_fields(self, pg_stack: Stack) -> None:
        body = self._refused(pg_stack, {"file": ("x.zip", make_zip(GOOD))}, {}, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "name"]

    def test_deleting_a_dataset_removes_it_and_its_files(self, pg_stack: Stack, shapes_dir: Path) -> None:
        with pg_stack.client() as c:
            r = c.post("/v1/datasets", data={"name": "tmp"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
            assert r.status_code == 201, r.text
            ds_id = r.json()["id"]
            assert ds_id in stored_datasets(pg_stack)
            assert c.delete(f"/v1/datasets/{ds_id}").status_code == 204
            assert c.get(f"/v1/datasets/{ds_id}").status_code == 404
        assert ds_id not in stored_datasets(pg_stack)
