"""The scale benchmark's parts that need no service: the generated JPEG folders and the proxy that cuts."""

import socket
import threading
from pathlib import Path

from PIL import Image

from benchmarks.scale import CuttingProxy, generate, zip_stored


def test_generated_folder_has_jpegs_of_the_asked_sizes_and_is_kept(tmp_path: Path) -> None:
    args = {"target_bytes": None, "images": 30, "domains": ("photo",), "lo": 224, "hi": 260, "seed": 0, "workers": 1}
    info = generate(tmp_path / "set", **args)
    files = sorted((tmp_path / "set").rglob("*.jpg"))
    assert info["images"] == len(files) == 30
    assert info["bytes"] == sum(f.stat().st_size for f in files)
    sides = {Image.open(f).size for f in files}
    assert all(w == h and 224 <= w <= 260 for w, h in sides) and len(sides) > 1
    assert len({f.parent.name for f in files}) > 1  # several classes
    mtime = files[0].stat().st_mtime_ns
    assert generate(tmp_path / "set", **args) == info and files[0].stat().st_mtime_ns == mtime  # not redone
    zip_stored(tmp_path / "set", tmp_path / "set.zip")
    assert (tmp_path / "set.zip").stat().st_size > info["bytes"]


def test_proxy_cuts_every_connection_once(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []

    def drain(conn: socket.socket) -> None:
        total = 0
        with conn:
            while data := conn.recv(65536):
                total += len(data)
        received.append(total)

    def sink() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=sink, daemon=True).start()
    proxy = CuttingProxy(server.getsockname()[1], cut_after=100_000)
    cut = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        for _ in range(100):
            cut.sendall(b"x" * 10_000)
    except OSError:
        pass
    cut.close()
    for _ in range(100):  # the proxy cuts from its own threads
        if proxy.cut_done:
            break
        threading.Event().wait(0.05)
    with socket.create_connection(("127.0.0.1", proxy.port)) as after:  # once cut, traffic passes again
        after.sendall(b"y" * 500_000)
    for _ in range(200):
        if len(received) == 2:
            break
        threading.Event().wait(0.05)
    proxy.close()
    server.close()
    assert proxy.cut_done, proxy.sent
    assert len(received) == 2, received
    assert min(received) < 1_000_000 and 500_000 in received, received
