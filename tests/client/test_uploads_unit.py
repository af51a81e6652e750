"""saft_client's resumable uploads without a server: the deterministic folder archive, the state file, the part
plan, which parts a resume sends, and the progress of parts sent in parallel. The flows against the service
(parallel parts, an interrupted and resumed upload, a cut connection) are in tests/client/test_uploads_client.py."""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from saft_client import SaftClientError, Upload
from saft_client._uploads import (
    Part,
    PartBody,
    StateStore,
    Tally,
    UploadStopped,
    archive_source,
    folder_archive,
    folder_source,
    parts_to_send,
    plan_parts,
    read_range,
    resolve_cache_dir,
    sha256_of,
    state_key,
)

from saft_cli.remote import _byte_count


def _dataset(root: Path, *, seed: int = 0) -> Path:
    """Two classes of incompressible "images", a classes.json and hidden files (left out of the archive)."""
    rnd = __import__("random").Random(seed)
    for cls, suffix in (("ant", ".png"), ("bee", ".JPG")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}{suffix}").write_bytes(rnd.randbytes(40_000 + i))
    (root / "classes.json").write_text('{"ant": "an ant", "bee": "a bee"}' * 50)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def _copy_with_other_mtimes(src: Path, dst: Path) -> Path:
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
            os.utime(target, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return dst


def test_folder_archive_is_byte_identical_for_the_same_files(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "ds")
    first = folder_archive(folder, tmp_path / "cache1")
    again = folder_archive(_copy_with_other_mtimes(folder, tmp_path / "copy"), tmp_path / "cache2")
    # The bytes depend on names and contents only (not on mtimes or on the cache), so a part is the same part
    # whenever the archive is rebuilt.
    assert first.read_bytes() == again.read_bytes()
    with zipfile.ZipFile(first) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names) == [
            "ant/0.png", "ant/1.png", "ant/2.png", "bee/0.JPG", "bee/1.JPG", "bee/2.JPG", "classes.json",
        ]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        kinds = {i.filename: i.compress_type for i in infos}
        assert kinds["ant/0.png"] == kinds["bee/2.JPG"] == zipfile.ZIP_STORED  # images: not compressed again
        assert kinds["classes.json"] == zipfile.ZIP_DEFLATED
        assert zf.read("bee/1.JPG") == (folder / "bee" / "1.JPG").read_bytes()


def test_folder_archive_is_built_once_per_file_list(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "ds")
    cache = tmp_path / "cache"
    archive = folder_archive(folder, cache)
    before = archive.stat()
    assert folder_archive(folder, cache) == archive
    assert archive.stat().st_mtime_ns == before.st_mtime_ns and archive.stat().st_ino == before.st_ino  # reused
    os.utime(folder / "ant" / "1.png", ns=(1, 1))  # a file's mtime changed: another file list, another archive
    assert folder_archive(folder, cache) != archive
    assert sorted(p.name for p in (cache / "archives").iterdir() if p.name.startswith(".")) == []  # no temp left
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache should be")
    with pytest.raises(SaftClientError, match="cannot zip"):  # the client's error, not an OSError
        folder_archive(folder, blocked)
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(SaftClientError, match="empty"):
        folder_archive(tmp_path / "empty", cache)


def test_plan_parts_cuts_all_full_but_the_last() -> None:
    assert plan_parts(10, 4) == [Part(1, 0, 4), Part(2, 4, 4), Part(3, 8, 2)]
    assert [p.size for p in plan_parts(8, 4)] == [4, 4]
    assert plan_parts(1, 16 * 1024 * 1024) == [Part(1, 0, 1)]
    parts = plan_parts(1_000_003, 65_536)
    assert len(parts) == 16 and sum(p.size for p in parts) == 1_000_003
    assert all(a.offset + a.size == b.offset for a, b in zip(parts, parts[1:], strict=False))
    with pytest.raises(SaftClientError):
        plan_parts(0, 4)
    with pytest.raises(SaftClientError):
        plan_parts(10, 0)


def _upload(parts: list[tuple[int, int, str]], total: int = 10, part_size: int = 4) -> Upload:
    now = datetime.now(UTC)
    return Upload.model_validate({
        "id": "upl_1", "filename": "x.zip", "bytes": total, "sha256": None, "part_size": part_size,
        "parts_total": len(plan_parts(total, part_size)), "bytes_received": sum(s for _, s, _ in parts),
        "parts": [{"number": n, "size": s, "sha256": h} for n, s, h in parts], "status": "pending",
        "created_at": now, "expires_at": now,
    })


def test_a_resume_trusts_only_parts_held_with_our_checksum() -> None:
    mine = {1: "a" * 64, 2: "b" * 64, 3: "c" * 64}
    upload = _upload([(1, 4, "a" * 64), (2, 4, "f" * 64)])  # part 2 differs, part 3 never arrived
    assert [p.number for p in parts_to_send(plan_parts(10, 4), upload, mine)] == [2, 3]
    assert [p.number for p in parts_to_send(plan_parts(10, 4), upload, {})] == [1, 2, 3]  # no hash: no trust
    assert upload.missing == [3]


def test_state_key_follows_url_path_size_and_mtime(tmp_path: Path) -> None:
    archive = tmp_path / "d.zip"
    archive.write_bytes(b"x" * 100)
    os.utime(archive, ns=(7, 7))
    key = state_key("http://saft.test", archive_source(archive))
    assert state_key("http://saft.test/", archive_source(archive)) == key
    assert state_key("http://other.test", archive_source(archive)) != key
    twin = tmp_path / "sub" / "d.zip"  # the same bytes and mtime elsewhere: another source
    twin.parent.mkdir()
    twin.write_bytes(archive.read_bytes())
    os.utime(twin, ns=(7, 7))
    assert state_key("http://saft.test", archive_source(twin)) != key
    os.utime(archive, ns=(8, 8))
    assert state_key("http://saft.test", archive_source(archive)) != key
    archive.write_bytes(b"x" * 101)
    os.utime(archive, ns=(7, 7))
    assert state_key("http://saft.test", archive_source(archive)) != key


def test_state_file_round_trip_and_clear(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = StateStore(cache)
    source = folder_source(_dataset(tmp_path / "ds"), "ds.zip", cache)
    key = state_key("http://saft.test", source)
    assert store.load(key) is None
    state = store.new(key, "http://saft.test", source)
    assert state.sha256 == hashlib.sha256(source.file.read_bytes()).hexdigest() and state.size == source.size
    state.attach(_upload([], total=state.size, part_size=65_536))
    store.record(state, 2, "b" * 64)
    loaded = store.load(key)
    assert loaded == state and loaded is not None and loaded.hashes == {2: "b" * 64}  # int keys after JSON
    first = loaded.complete_key_for("ds", None)
    assert loaded.complete_key_for("ds", None) == first  # kept: a later call repeats the same complete
    assert loaded.complete_key_for("other", None) != first  # another name: another request, another key
    assert loaded.complete_key_for("other", "mine") == "mine"
    # Another part size (a reconfigured server): the part hashes no longer apply.
    loaded.attach(_upload([], total=state.size, part_size=1024))
    assert loaded.hashes == {} and loaded.part_size == 1024
    # An unreadable or foreign state is ignored (the upload begins anew), never trusted.
    store.path(key).write_text("{not json")
    assert store.load(key) is None
    store.save(state)
    store.clear(state, archive=False)
    assert not store.path(key).exists() and source.file.exists()
    store.save(state)
    store.clear(state)
    assert not store.path(key).exists() and not source.file.exists()  # the cached zip goes with its state


def test_clear_never_removes_the_users_archive(tmp_path: Path) -> None:
    archive = tmp_path / "mine.zip"
    archive.write_bytes(b"PK" * 10)
    store = StateStore(tmp_path / "cache")
    source = archive_source(archive)
    state = store.new(state_key("http://saft.test", source), "http://saft.test", source)
    store.clear(state)
    assert archive.read_bytes() == b"PK" * 10 and not store.path(state.key).exists()


def test_part_body_reports_progress_and_takes_back_a_failed_attempt(tmp_path: Path) -> None:
    data = os.urandom(700_000)
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    tally = Tally(len(data), lambda done, total: seen.append((done, total)))
    tally.start(100_000)  # a resume: what the server already holds
    part = Part(2, 300_000, 300_000)
    body = PartBody(f, part, tally, threading.Event())
    chunks = body.sync()["content"]
    next(chunks)  # the first attempt breaks after one chunk
    assert tally.done > 100_000
    assert b"".join(body.sync()["content"]) == data[300_000:600_000]  # the retry: the whole part again
    assert tally.done == 400_000 and seen[0] == (100_000, 700_000) and seen[-1] == (400_000, 700_000)
    assert body.headers(sha256_of(f, 300_000, 300_000))["X-Checksum-SHA256"] == hashlib.sha256(
        data[300_000:600_000]
    ).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(UploadStopped):
        next(PartBody(f, part, tally, stop).sync()["content"])


def test_a_part_is_never_sent_short(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 10)
    assert b"".join(read_range(f, 4, 6)) == b"x" * 6
    with pytest.raises(SaftClientError, match="changed"):
        list(read_range(f, 4, 8))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAFT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "saft"
    monkeypatch.setenv("SAFT_CACHE_DIR", str(tmp_path / "mine"))
    assert resolve_cache_dir() == tmp_path / "mine"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SAFT_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir() == Path.home() / ".cache" / "saft"


def test_cli_sizes() -> None:
    assert _byte_count("1048576") == 1048576
    assert _byte_count("64M") == _byte_count("64MiB") == 64 * 1024**2
    assert _byte_count("512k") == 512 * 1024 and _byte_count("1.5G") == 3 * 1024**3 // 2
    for bad in ("lots", "-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _byte_count(bad)
