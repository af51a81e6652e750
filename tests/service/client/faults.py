"""Faults injected between the client and the real service, as an httpx transport wrapped around the real
one (so every request still goes over TCP to the real API): cut an event stream after some bytes (the
connection is really closed), flip a byte of a download, lose the answer of a request the server did handle.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx


class _Cut(httpx.SyncByteStream):
    """Pass ``limit`` bytes on, then close the real connection and fail the read as a dropped one would."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                self.inner.close()
                raise httpx.ReadError("connection dropped (test fault)")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class _Flip(httpx.SyncByteStream):
    """The body with one byte (at ``offset``) inverted."""

    def __init__(self, inner: httpx.SyncByteStream, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def __iter__(self) -> Iterator[bytes]:
        pos = 0
        for chunk in self.inner:
            if pos <= self.offset < pos + len(chunk):
                i = self.offset - pos
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            pos += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class FaultTransport(httpx.HTTPTransport):
    """The real HTTP transport, with faults on requests whose path ends with a given suffix.

    - ``cut={suffix: [n1, n2, ...]}``: the k-th matching answer is cut after n_k bytes (later ones pass).
    - ``flip={suffix: offset}``: every matching answer has the byte at ``offset`` inverted.
    - ``lose={suffix: n}``: the first n matching requests reach the server, but their answers are dropped.
    ``seen`` records (method, path, headers) of every request sent."""

    def __init__(
        self,
        *,
        cut: dict[str, list[int]] | None = None,
        flip: dict[str, int] | None = None,
        lose: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.cut = {k: list(v) for k, v in (cut or {}).items()}
        self.flip = dict(flip or {})
        self.lose = dict(lose or {})
        self.seen: list[tuple[str, str, httpx.Headers]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append((request.method, path, request.headers))
        response = super().handle_request(request)
        for suffix, left in self.lose.items():
            if path.endswith(suffix) and left > 0:
                self.lose[suffix] = left - 1
                response.read()
                response.close()
                raise httpx.ReadError("answer lost (test fault)")
        for suffix, limits in self.cut.items():
            if path.endswith(suffix) and limits:
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = _Cut(response.stream, limits.pop(0))
        for suffix, offset in self.flip.items():
            if path.endswith(suffix):
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = _Flip(response.stream, offset)
        return response
