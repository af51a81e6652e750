"""Faults injected between the client and the real service, as an httpx transport wrapped around the real
one (so every request still goes over TCP to the real API): cut an event stream after some bytes (the
connection is really closed), flip a byte of a download, lose the answer of a request the server did handle.
And a TCP proxy that cuts what a client sends (an upload) after some bytes, and can stay down.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
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


class CutProxy:
    """A loopback TCP proxy in front of the service that can cut connections for real.

    ``cut_after(n, stay_down=...)``: once ``n`` more bytes have gone from clients to the server, the connection
    carrying the n-th byte is closed (the rest of that request never reaches the server). With ``stay_down``
    the service then looks gone until ``heal()``: a new connection is closed as soon as it is accepted, and
    one already open as soon as the client sends on it. ``url`` is where clients connect."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._budget: int | None = None  # bytes still passed upstream before the cut; None: no cut pending
        self._stay_down = False
        self.down = False
        self.cuts = 0
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n: int, *, stay_down: bool = False) -> None:
        with self._lock:
            self._budget, self._stay_down = n, stay_down

    def heal(self) -> None:
        with self._lock:
            self.down, self._budget = False, None

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                _reset(client)
                continue
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _allow(self, n: int) -> int:
        """How many of ``n`` bytes going upstream may pass; fewer means: cut this connection after them."""
        with self._lock:
            if self.down:
                return 0
            if self._budget is None:
                return n
            if n < self._budget:
                self._budget -= n
                return n
            allowed, self._budget = self._budget, None
            self.cuts += 1
            self.down = self._stay_down
            return allowed

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                allowed = self._allow(len(data)) if upstream else len(data)
                dst.sendall(data[:allowed])
                if allowed < len(data):
                    break
        except OSError:
            pass
        _reset(src)
        _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Close at once, with a reset rather than an orderly end (as a dropped connection looks). The shutdown
    wakes the other pump thread blocked reading this socket (a plain close would not)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
