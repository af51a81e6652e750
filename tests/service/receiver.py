"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that records what it gets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers POSTs with ``statuses`` in order (then 200); ``location`` is sent with a 3xx."""

    statuses: list[int] = field(default_factory=list)
    location: str | None = None
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def for_job(self, job_id: str) -> list[Received]:
        return [r for r in self.requests if f'"job_id":"{job_id}"'.encode() in r.body]


@contextmanager
def receiver(statuses: list[int] | None = None, location: str | None = None) -> Iterator[Receiver]:
    rec = Receiver(list(statuses or []), location)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # the standard library's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                rec.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            if rec.location and 300 <= status < 400:
                self.send_header("Location", rec.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def signed_by(secret: str, got: Received) -> bool:
    """Standard Webhooks, checked here with hmac and base64 directly (not the client's ``verify``): one of the
    ``v1,`` signatures is the HMAC-SHA256 of ``id.timestamp.body`` keyed with the base64 after ``whsec_``."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = got.headers["webhook-id"].encode() + b"." + got.headers["webhook-timestamp"].encode() + b"." + got.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return expected in got.headers["webhook-signature"].split(" ")
