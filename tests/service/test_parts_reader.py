"""The parts of an upload read as one file: every read and seek equals the joined bytes, and an archive of
either kind opens over them (no assembled copy is written)."""

from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from saft_service.multipart import PartsReader, PartWriter
from tests.fixtures.stack import tar_gz_dir, zip_dir


def write_parts(folder: Path, data: bytes, part_size: int) -> tuple[list[Path], list[int]]:
    paths, sizes = [], []
    for i, start in enumerate(range(0, len(data), part_size), start=1):
        writer = PartWriter(folder / f"{i}.part")
        block = data[start : start + part_size]
        writer.put([block[: len(block) // 2], block[len(block) // 2 :]])
        writer.close()
        paths.append(folder / f"{i}.part")
        sizes.append(len(block))
    return paths, sizes


def test_reads_and_seeks_equal_the_joined_bytes(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    paths, sizes = write_parts(tmp_path, data, 999)
    reader = io.BufferedReader(PartsReader(paths, sizes), buffer_size=64)
    rng = random.Random(0)
    for _ in range(300):
        where, n = rng.randrange(0, len(data) + 10), rng.randrange(0, 3000)
        whence = rng.choice([io.SEEK_SET, io.SEEK_END])
        pos = reader.seek(where - len(data) if whence == io.SEEK_END else where, whence)
        assert reader.read(n) == data[pos : pos + n]
    reader.seek(0)
    assert reader.read() == data


def test_an_archive_opens_over_the_parts(tmp_path: Path, shapes_dir: Path) -> None:
    for kind, data in (("zip", zip_dir(shapes_dir)), ("tgz", tar_gz_dir(shapes_dir))):
        folder = tmp_path / kind
        folder.mkdir()
        reader = io.BufferedReader(PartsReader(*write_parts(folder, data, 1000)))
        if kind == "zip":
            with zipfile.ZipFile(reader) as zf:
                names = sorted(n for n in zf.namelist() if n.endswith(".png"))
                assert zf.read(names[0]) == (shapes_dir / names[0]).read_bytes()
        else:
            with tarfile.open(fileobj=reader, mode="r:*") as tf:
                member = next(m for m in tf if m.name.endswith(".png"))
                assert tf.extractfile(member).read() == (shapes_dir / member.name).read_bytes()


def test_a_part_shorter_on_disk_than_recorded_is_an_error(tmp_path: Path) -> None:
    paths, sizes = write_parts(tmp_path, os.urandom(3000), 1000)
    paths[1].write_bytes(b"short")
    with pytest.raises(OSError, match="part 2 of the upload is shorter"):
        io.BufferedReader(PartsReader(paths, sizes)).read()
