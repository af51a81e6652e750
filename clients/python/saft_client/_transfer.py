"""Bodies that stream: a folder zipped on the fly for upload, and verified, atomic downloads.

Neither ever holds a whole dataset or checkpoint in memory: the upload is produced in chunks as the HTTP
client reads it, and a download is written to a temporary file beside the target, hashed as it arrives, and
renamed into place only when its SHA-256 matches the server's ``X-Checksum-SHA256``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import ChecksumMismatch, SaftClientError

Progress = Callable[[int, "int | None"], None]
"""Called as ``progress(bytes_done, bytes_total_or_None)`` while a body is sent or received."""

CHUNK = 256 * 1024
# Already-compressed images are stored, not deflated again (saves CPU, same size).
_STORED = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip", ".gz", ".tgz", ".bz2", ".xz"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def folder_files(root: Path) -> list[Path]:
    """Files under ``root`` in a stable order, leaving out hidden files and folders (``.DS_Store``, ``.git``)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class _Sink:
    """Where ``zipfile`` writes: an append-only buffer (not seekable, so zipfile uses data descriptors)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Part of zipfile's writer protocol; zipfile never closes a file it was handed."""

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def zip_chunks(root: Path, files: list[Path]) -> Iterator[bytes]:
    """The bytes of a zip of ``files`` (paths relative to ``root``), produced one chunk at a time."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w") as zf:
        for path in files:
            method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo.from_file(path, path.relative_to(root).as_posix())
            info.compress_type = method
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if len(sink.buf) >= CHUNK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()  # the central directory


class ReadableChunks(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (length unknown: sent with chunked encoding)."""

    def __init__(self, chunks: Iterator[bytes], progress: Progress | None = None, total: int | None = None):
        self._chunks = chunks
        self._buf = bytearray()
        self._done = 0
        self._progress = progress
        self._total = total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                break
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._done += n
        if self._progress and n:
            self._progress(self._done, self._total)
        return out


class CountingFile:
    """A binary file that reports progress as it is read; its length stays known (sent with Content-Length)."""

    def __init__(self, f: IO[bytes], progress: Progress | None, total: int) -> None:
        self._f = f
        self._progress = progress
        self._total = total

    def read(self, size: int = -1) -> bytes:
        out = self._f.read(size)
        if self._progress and out:
            self._progress(self._f.tell(), self._total)
        return out

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def dataset_source(path: str | os.PathLike[str]) -> tuple[str, Path, bool]:
    """``(file name to send, path, is_folder)`` for a dataset folder or archive; refuses anything else."""
    p = Path(path)
    if p.is_dir():
        return f"{p.resolve().name or 'dataset'}.zip", p, True
    if p.is_file():
        if not p.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise SaftClientError(f"{p}: not a folder or a .zip, .tar, .tar.gz or .tgz archive")
        return p.name, p, False
    raise SaftClientError(f"{p}: no such folder or file")


def umask() -> int:
    """The process's file-mode creation mask (read without changing it where the system allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


class VerifiedWriter:
    """Receives a download's chunks into a temporary file beside ``dest``; ``commit`` checks the SHA-256 and
    renames it into place, ``abort`` removes it. ``dest`` is never seen half-written or unverified, and gets
    the mode any new file gets (0666 less the umask, as ``open`` gives), not the temporary file's 0600.
    ``overwrite=False`` refuses to replace an existing ``dest`` (checked again at the rename, atomically)."""

    def __init__(
        self, dest: str | os.PathLike[str], expected_sha256: str | None, url: str, *, overwrite: bool = True
    ) -> None:
        self.dest = Path(dest)
        self.overwrite = overwrite
        if not overwrite and self.dest.exists():
            raise FileExistsError(f"{self.dest} exists; nothing written")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dest.parent, prefix=f".{self.dest.name}.", suffix=".part")
        os.fchmod(fd, 0o666 & ~umask())
        self._f = os.fdopen(fd, "wb")
        self.tmp = Path(tmp)
        self.expected = (expected_sha256 or "").lower()
        self.url = url
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self.sha.update(chunk)
        self.size += len(chunk)

    def commit(self) -> Path:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        actual = self.sha.hexdigest()
        if not self.expected:
            self.abort()
            raise SaftClientError(f"{self.url}: the server sent no X-Checksum-SHA256; nothing written")
        if actual != self.expected:
            self.abort()
            raise ChecksumMismatch(self.url, self.expected, actual)
        if self.overwrite:
            os.replace(self.tmp, self.dest)
            return self.dest
        try:
            os.link(self.tmp, self.dest)  # fails if dest appeared meanwhile: never replaces it
        except FileExistsError:
            self.abort()
            raise FileExistsError(f"{self.dest} exists; nothing written") from None
        except OSError:  # a file system without hard links: check, then rename (a narrow race remains)
            if self.dest.exists():
                self.abort()
                raise FileExistsError(f"{self.dest} exists; nothing written") from None
            os.replace(self.tmp, self.dest)
            return self.dest
        self.tmp.unlink()
        return self.dest

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)


def progress_callback(
    progress: bool | Progress | None, desc: str
) -> tuple[Progress | None, Callable[[], None]]:
    """``(callback, close)`` for a ``progress`` argument: a callable is used as is; True draws a tqdm bar on
    stderr when tqdm is installed (and nothing when it is not); None or False, nothing."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
    started = False

    def update(done: int, total: int | None) -> None:
        # The bar's rate and ETA count what moves from the first report on: a resumed upload starts with its
        # parts already on the server, which took no time now.
        nonlocal started
        bar.total = total
        if not started:
            started = True
            bar.initial = bar.n = done
            bar.refresh()
        else:
            bar.update(done - bar.n)

    return update, bar.close
