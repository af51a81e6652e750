"""Data at gigabyte scale, end to end through the service: a resumable upload, an import by path, a job whose
evaluating stage reads each image once, each against its floor measured in the same run.

1. Generate (``saft_worlds``) a training ImageFolder of ``--gb`` GB of 224-512 px JPEGs (photos of the world's
   12 classes; default about 2 GB) and an eval ImageFolder of ``--eval-images`` 224 px JPEGs (paintings and
   sketches: a shifted domain). Variants of a few hundred rendered scenes (scaled, flipped, noised), so that
   generating is cheap and the JPEGs are as large as photos of that size.
2. ``saft serve`` on the embedded default, the eval folder's parent an import root.
3. The training set, zipped (stored), is uploaded by the Python client in parts, through a loopback proxy that
   cuts every connection once half of the file has passed: the client (no retries) stops; called again, it
   resumes. Measured: throughput against ``cp`` of the same file on the same disk, the API process's RSS
   growth (sampled), and which parts were sent twice (from the store: a part sent again gets a new row time).
4. The eval set is registered by path (nothing copied).
5. A saft-tiny SAFT job: 16 shots per class of the uploaded set, evaluated on the eval set along the alpha
   grid (five alphas). The evaluating stage's time against its floor, measured here: one decode-only pass over
   the eval set (the job's loader: PIL decode + resize, the same data-loader workers) plus five forward passes
   over the already-decoded batches (one timed, times five: the same work at other weights); and against one
   plain evaluation pass (what ``saft evaluate`` runs).

Run: ``python -m benchmarks.scale [--gb 2] [--eval-images 20000] [--work var/bench-scale] [--out DIR]``;
writes ``DIR/scale.json`` and ``DIR/scale.md`` (default ``benchmarks/results``). About 20 minutes on 2 cores
at the defaults; ``--gb 0.05 --eval-images 600`` rehearses it in about two.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.servers import free_port

log = logging.getLogger("benchmarks.scale")
ROOT = Path(__file__).resolve().parents[1]
ALPHAS = 5
BASES_PER_CLASS = 24
MiB = 1 << 20


# ------------------------------------------------------------------------------------------ 1. the data
def _bases(domains: tuple[str, ...], seed: int, size: int = 112) -> list[tuple[str, np.ndarray]]:
    from saft_worlds.world import iter_domain

    out = []
    for d in domains:
        for scene, image in iter_domain(d, BASES_PER_CLASS, seed, size=size):
            out.append((scene.cls, np.asarray(image.convert("RGB"))))
    return out


def _write_chunk(args: tuple[str, list[tuple[str, np.ndarray]], int, int, int, int, int]) -> int:
    """Write ``count`` JPEG variants numbered from ``start`` into ``out``; returns their bytes."""
    out, bases, start, count, lo, hi, seed = args
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(start, start + count):
        cls, base = bases[int(rng.integers(len(bases)))]
        side = int(rng.integers(lo, hi + 1))
        image = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR)
        arr = np.asarray(image, dtype=np.int16)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr + rng.integers(-14, 15, size=arr.shape, dtype=np.int16) + int(rng.integers(-20, 21))
        path = Path(out) / cls / f"{i:07d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def generate(out: Path, *, target_bytes: int | None, images: int | None, domains: tuple[str, ...], lo: int,
             hi: int, seed: int, workers: int) -> dict[str, Any]:
    """An ImageFolder of JPEGs until ``target_bytes`` or ``images``; kept when it exists (same arguments)."""
    stamp = out / ".generated.json"
    spec = {"target_bytes": target_bytes, "images": images, "domains": domains, "lo": lo, "hi": hi, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == json.loads(json.dumps(spec)):
        return json.loads(stamp.read_text())
    shutil.rmtree(out, ignore_errors=True)
    from saft_worlds.world import CLASSES

    for cls in CLASSES:
        (out / cls).mkdir(parents=True)
    bases = _bases(domains, seed)
    t0 = time.perf_counter()
    written = count = 0
    chunk = 500
    with ProcessPoolExecutor(workers) as pool:
        while (images is None or count < images) and (target_bytes is None or written < target_bytes):
            jobs = []
            for w in range(workers):
                n = chunk if images is None else max(0, min(chunk, images - count - w * chunk))
                if n:
                    jobs.append((str(out), bases, count + w * chunk, n, lo, hi, seed * 1000 + count + w))
            for (_, _, _, n, *_), size in zip(jobs, pool.map(_write_chunk, jobs), strict=True):
                written += size
                count += n
            log.info("generated %d images, %.2f GB", count, written / 1e9)
    info = {"spec": spec, "images": count, "bytes": written, "seconds": time.perf_counter() - t0}
    stamp.write_text(json.dumps(info))
    return json.loads(stamp.read_text())  # as a later run reads it back


def zip_stored(folder: Path, archive: Path) -> None:
    if archive.exists() and archive.stat().st_mtime > (folder / ".generated.json").stat().st_mtime:
        return
    tmp = archive.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*.jpg")):
            zf.write(p, p.relative_to(folder).as_posix())
    tmp.replace(archive)


# ------------------------------------------------------------------------------------------ 2. the service
class CuttingProxy:
    """A loopback TCP proxy that closes every connection once, when ``cut_after`` bytes have gone upstream."""

    def __init__(self, upstream: int, cut_after: int) -> None:
        self.upstream, self.cut_after = upstream, cut_after
        self.sent = 0
        self.cut_done = False
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._open += [down, up]
            ended = threading.Semaphore(0)

            def close_when_both_ended(down: socket.socket = down, up: socket.socket = up,
                                      ended: threading.Semaphore = ended) -> None:
                ended.acquire()
                ended.acquire()
                for s in (down, up):  # closed only once neither pump reads them: no descriptor reused under one
                    s.close()

            threading.Thread(target=close_when_both_ended, daemon=True).start()
            threading.Thread(target=self._pump, args=(down, up, True, ended), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False, ended), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, ended: threading.Semaphore) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        cut = not self.cut_done and self.sent >= self.cut_after
                        if cut:
                            self.cut_done = True
                            victims, self._open = self._open, []
                    if cut:
                        for s in victims:
                            with _quiet():
                                s.shutdown(socket.SHUT_RDWR)
                        return
        except OSError:
            pass
        finally:
            for s in (src, dst):  # wakes the other pump of this connection
                with _quiet():
                    s.shutdown(socket.SHUT_RDWR)
            ended.release()

    def close(self) -> None:
        self._server.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


class RssSampler:
    """The max RSS of a process (and its threads) sampled every 0.1 s while active."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def mark(self) -> int:
        """The growth so far (peak minus start), bytes."""
        return self.peak - self.start

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start


def start_service(work: Path, import_root: Path) -> tuple[subprocess.Popen[str], str, str]:
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFT_")}
    env.update(SAFT_DATA_DIR=str(data), SAFT_IMPORT_ROOTS=str(import_root), SAFT_MAX_ARCHIVE_MEMBERS="1000000",
               SAFT_PROGRESS_INTERVAL="1", PYTHONUNBUFFERED="1")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "saft_cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    key = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("API key"):
            key = line.split()[-1]
        if line.startswith("URL:"):
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    if key is None:
        raise RuntimeError("saft serve printed no key")
    import httpx

    for _ in range(240):
        with _quiet():
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                break
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}", key


# ------------------------------------------------------------------------------------------ 3-5. measure
def upload_with_cut(base_url: str, key: str, archive: Path, data_dir: Path, cache: Path, api_pid: int) -> tuple[Any, dict[str, Any]]:
    """Upload ``archive`` through a proxy that cuts every connection at half the file, then resume. Transfer
    time ends when the progress callback reports every byte sent (completing is timed on its own)."""
    from saft_client import Client, RetryPolicy
    from saft_client.errors import SaftClientError

    size = archive.stat().st_size
    port = int(base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=size // 2)
    via = f"http://127.0.0.1:{proxy.port}"
    shutil.rmtree(cache, ignore_errors=True)
    sent_at: list[float] = []
    starts: list[int] = []  # each call's first report: the bytes the server already holds

    rss = RssSampler(api_pid)
    rss_sent: list[int] = []

    def progress(done: int, total: int) -> None:
        if len(starts) < calls[0]:
            starts.append(done)
        if done >= total and not sent_at:
            sent_at.append(time.perf_counter())
            rss_sent.append(rss.mark())

    calls = [1]
    t0 = time.perf_counter()
    first_error = None
    with Client(via, key, retry=RetryPolicy(max_retries=0), timeout=600) as c:
        try:
            c.datasets.upload(archive, name="train", cache_dir=cache, progress=progress)
        except (SaftClientError, OSError) as e:
            first_error = type(e).__name__
    first_call = time.perf_counter() - t0
    if first_error is None:
        raise RuntimeError("the cut did not interrupt the upload")
    upstream_before = proxy.sent
    sent_at.clear()
    calls[0] = 2
    t1 = time.perf_counter()
    with Client(via, key, timeout=3600) as c:
        ds = c.datasets.upload(archive, name="train", cache_dir=cache, progress=progress)
    done = time.perf_counter()
    rss_growth = rss.stop()
    proxy.close()
    transfer = first_call + ((sent_at[0] if sent_at else done) - t1)
    held = starts[1] if len(starts) > 1 else 0
    missing = size - held
    after = proxy.sent - upstream_before
    return ds, {
        "archive_bytes": size, "transfer_s": transfer, "first_call_s": first_call, "first_call_error": first_error,
        "complete_s": done - (sent_at[0] if sent_at else done), "bytes_held_at_cut": held,
        "bytes_missing_at_cut": missing, "bytes_sent_after_resume": after,
        # A held part sent again would add a whole part (16 MiB) on top of the missing bytes and HTTP overhead.
        "held_parts_resent": max(0, round((after - missing) / (16 * MiB))),
        "throughput_mb_s": size / transfer / 1e6, "api_rss_growth_mb": rss_growth / 1e6,
        "api_rss_growth_transfer_mb": (rss_sent[-1] if rss_sent else rss_growth) / 1e6,
    }


def upload_direct(base_url: str, key: str, archive: Path, cache: Path, api_pid: int) -> dict[str, Any]:
    """The same archive again, straight to the API (no proxy, no cut), as a new upload; the dataset it makes is
    deleted afterwards. Returns the transfer's throughput and the API's RSS growth."""
    from saft_client import Client

    rss = RssSampler(api_pid)
    sent_at: list[float] = []
    rss_sent: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= total and not sent_at:
            sent_at.append(time.perf_counter())
            rss_sent.append(rss.mark())

    t0 = time.perf_counter()
    with Client(base_url, key, timeout=3600) as c:
        ds = c.datasets.upload(archive, name="train-direct", cache_dir=cache, progress=progress, resume=False)
        done = time.perf_counter()
        c.datasets.delete(ds)
    growth = rss.stop()
    transfer = (sent_at[0] if sent_at else done) - t0
    return {"transfer_s": transfer, "throughput_mb_s": archive.stat().st_size / transfer / 1e6,
            "complete_s": done - (sent_at[0] if sent_at else done), "api_rss_growth_mb": growth / 1e6,
            "api_rss_growth_transfer_mb": (rss_sent[-1] if rss_sent else growth) / 1e6}


def sha256_pass(archive: Path) -> float:
    """MB/s of one SHA-256 pass over the file (what the client does once, before the first part)."""
    import hashlib

    h = hashlib.sha256()
    t0 = time.perf_counter()
    with archive.open("rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return archive.stat().st_size / (time.perf_counter() - t0) / 1e6


def disk_copy(archive: Path, work: Path) -> float:
    dst = work / "cp-baseline.zip"
    t0 = time.perf_counter()
    subprocess.run(["cp", str(archive), str(dst)], check=True)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return archive.stat().st_size / seconds / 1e6


def floor_and_plain(eval_dir: Path, batch_size: int, workers: int) -> dict[str, float]:
    """The evaluating stage's floor on this machine: a decode-only pass (the job's loader) plus five forward
    passes over the decoded batches; and one plain evaluation pass (decode + one forward)."""
    import torch

    from saft_core.data import make_loader
    from saft_core.datasets import load_dataset
    from saft_core.evaluation import evaluate_dataset
    from saft_core.models import ModelSpec, load_model
    from saft_core.zeroshot import build_head, clip_logits

    loaded = load_model(ModelSpec(), "cpu")
    ds = load_dataset(eval_dir, verify=False)
    templates = ["a photo of a {}."]
    loader = make_loader(ds, loaded.preprocess_eval, batch_size, num_workers=workers)
    t0 = time.perf_counter()
    batches = [images for images, _ in loader]
    decode = time.perf_counter() - t0
    loaded.model.eval()
    head = build_head(loaded.model, loaded.tokenizer, ds.class_names, templates, loaded.device)
    t0 = time.perf_counter()
    with torch.no_grad():  # one pass timed: the five are the same work at other weights
        for images in batches:
            clip_logits(loaded.model, images, head)
    forward5 = ALPHAS * (time.perf_counter() - t0)
    del batches
    t0 = time.perf_counter()
    evaluate_dataset(loaded, ds, name="eval", variant="zero-shot", templates=templates, batch_size=batch_size,
                     workers=workers)
    plain = time.perf_counter() - t0
    return {"decode_only_s": decode, "forward_5_s": forward5, "floor_s": decode + forward5, "plain_pass_s": plain,
            "images": len(ds), "decode_images_per_s": len(ds) / decode}


def run_job(base_url: str, key: str, train_id: str, eval_id: str, shots: int) -> dict[str, Any]:
    from saft_client import Client

    with Client(base_url, key, timeout=600) as c:
        job = c.jobs.create(dataset=train_id, eval_datasets=[eval_id], shots=shots, epochs=1, batch_size=32,
                            validation_fraction=0.0)
        job = c.jobs.wait(job, timeout=4 * 3600)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.id} ended {job.status}: {job.error}")
        return {"id": job.id, "metrics": dict(job.metrics or {}), "epochs": 1,
                "train_images": int((job.metrics or {}).get("train_images", 0)) or None,
                "evaluations": [e.model_dump(mode="json") for e in c.jobs.evaluations(job)]}


# ------------------------------------------------------------------------------------------ report
def decode_rate(folder: Path, images: int, batch_size: int, seed: int = 0) -> float:
    """Images/s of a decode-only pass (the job's loader: PIL decode + resize + normalise, no workers on the
    CPU) over ``images`` images of ``folder`` drawn with ``seed``."""
    from saft_core.data import make_loader
    from saft_core.datasets import load_dataset
    from saft_core.models import ModelSpec, load_model

    loaded = load_model(ModelSpec(), "cpu")
    ds = load_dataset(folder, verify=False)
    ds = ds.subset(sorted(random.Random(seed).sample(range(len(ds)), min(images, len(ds)))))
    t0 = time.perf_counter()
    for _ in make_loader(ds, loaded.preprocess_eval, batch_size):
        pass
    return len(ds) / (time.perf_counter() - t0)


def stage_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Images/s of the job's scoring, training and evaluating stages next to a decode-only pass over the same
    kind of images (the data pipeline's limit) and to the stage's own floor where one was measured."""
    m, ev = r["job"]["metrics"], r["evaluating"]
    n_train = r["job"]["train_images"]
    rows = [
        {"stage": "scoring", "images": n_train, "seconds": m["seconds_scoring"], "decode": r["train_decode_per_s"]},
        {"stage": "training", "images": n_train * r["job"]["epochs"], "seconds": m["seconds_training"],
         "decode": r["train_decode_per_s"]},
        {"stage": "evaluating (each image once, 5 alphas)", "images": ev["images"], "seconds": ev["stage_s"],
         "decode": ev["decode_images_per_s"], "floor_per_s": ev["images"] / ev["floor_s"]},
    ]
    for row in rows:
        row["per_s"] = row["images"] / row["seconds"]
        row["vs_decode"] = row["per_s"] / row["decode"]
    return rows


def _shown(value: Any) -> str:
    """An argument as the report shows it: a path inside the repository relative to it (no machine's paths)."""
    if isinstance(value, Path):
        resolved = value.resolve()
        return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else value.name
    return str(value)


def report(r: dict[str, Any]) -> str:
    up, ev, job, data = r["upload"], r["evaluating"], r["job"], r["data"]
    direct = up["direct"]
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    best = max(up["ratio_to_cp"], direct["ratio_to_cp"])
    rss = max(up["api_rss_growth_transfer_mb"], direct["api_rss_growth_transfer_mb"])
    lines = [
        "# Data at scale: upload, import, decode-once evaluation", "",
        f"{r['machine']}; training set {data['train']['images']:,} JPEGs, {data['train']['bytes'] / 1e9:.2f} GB "
        f"(224-512 px), zipped (stored) to {up['archive_bytes'] / 1e9:.2f} GB; eval set {data['eval']['images']:,} "
        "JPEGs (224 px), registered by path. Generated by `python -m benchmarks.scale`; client, API and worker "
        "share the machine's cores.", "",
        "## Upload through the Python client (multipart, 4 parts at once)", "",
        "| measure | cut at half and resumed (through a proxy) | straight to the API | target |",
        "|---|---|---|---|",
        f"| transfer (the client's SHA-256 pass included) | {up['transfer_s']:.1f} s | {direct['transfer_s']:.1f} s | |",
        f"| throughput | {up['throughput_mb_s']:.0f} MB/s | {direct['throughput_mb_s']:.0f} MB/s | |",
        f"| ratio to `cp` of the same file on the same disk ({up['cp_mb_s']:.0f} MB/s) | {up['ratio_to_cp']:.2f}x | "
        f"{direct['ratio_to_cp']:.2f}x | >= 0.5x ({ok(best >= 0.5)}) |",
        f"| API process RSS growth while the bytes arrive | {up['api_rss_growth_transfer_mb']:.0f} MB | "
        f"{direct['api_rss_growth_transfer_mb']:.0f} MB | < 100 MB ({ok(rss < 100)}) |",
        f"| ... and through completing | {up['api_rss_growth_mb']:.0f} MB | {direct['api_rss_growth_mb']:.0f} MB | |",
        f"| completing (SHA-256, extract, decode every image) | {up['complete_s']:.1f} s | {direct['complete_s']:.1f} s | |",
        "", f"The resume: the server held {up['bytes_held_at_cut']:,} bytes when the client was called again; "
        f"{up['bytes_missing_at_cut']:,} were missing and {up['bytes_sent_after_resume']:,} went through the proxy "
        f"after it (the difference is HTTP): held parts sent again: **{up['held_parts_resent']}** "
        f"(target 0: {ok(up['held_parts_resent'] == 0)}). One SHA-256 pass over the file here: "
        f"{up['sha256_mb_s']:.0f} MB/s. Registering the eval set by path (checks, every image decoded, nothing "
        f"copied): {r['import_s']:.1f} s.", "",
        "## Evaluating along five alphas, each image decoded once", "",
        "| measure | seconds |", "|---|---|",
        f"| evaluating stage of the job | {ev['stage_s']:.1f} |",
        f"| floor: decode-only pass + 5 forward passes over decoded batches | {ev['floor_s']:.1f} |",
        f"|   decode-only pass (the job's loader, same workers) | {ev['decode_only_s']:.1f} |",
        f"|   5 forward passes (one timed, x5: the same work at other weights) | {ev['forward_5_s']:.1f} |",
        f"| one plain evaluation pass (`saft evaluate`: decode + one forward) | {ev['plain_pass_s']:.1f} |", "",
        f"- stage / floor: **{ev['ratio_to_floor']:.2f}x** (target <= 1.2x: {ok(ev['ratio_to_floor'] <= 1.2)})",
        f"- stage / one plain pass: {ev['ratio_to_plain']:.2f}x (a read per alpha is five plain passes: 5x)", "",
        "## Images per second of each stage against the data pipeline's limit", "",
        "| stage | images | seconds | images/s | decode-only images/s | ratio | stage's floor images/s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {row['stage']} | {row['images']:,} | {row['seconds']:.1f} | {row['per_s']:.0f} | {row['decode']:.0f} | "
          f"{row['vs_decode']:.2f}x | {row['floor_per_s']:.0f} |" if "floor_per_s" in row else
          f"| {row['stage']} | {row['images']:,} | {row['seconds']:.1f} | {row['per_s']:.0f} | {row['decode']:.0f} | "
          f"{row['vs_decode']:.2f}x | |" for row in stage_rows(r)], "",
        "## The job's stages", "", "| stage | seconds |", "|---|---|",
        *[f"| {k.removeprefix('seconds_')} | {v:.1f} |" for k, v in job["metrics"].items() if k.startswith("seconds_")],
        "", "Top-1 on the eval set along alpha: "
        + ", ".join(f"{e['alpha']:g}: {e['top1']:.3f}" for e in sorted(job["evaluations"], key=lambda e: e["alpha"])),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=2.0, help="size of the training set's JPEGs, GB (1e9 bytes)")
    p.add_argument("--eval-images", type=int, default=20_000)
    p.add_argument("--shots", type=int, default=16, help="training images per class the job uses")
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench-scale")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--batch-size", type=int, default=32,
                   help="the floor's batch: the job's evaluation batch (scoring_batch_size, default 32)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    work = args.work.resolve()
    imports = work / "imports"
    imports.mkdir(parents=True, exist_ok=True)
    workers = max(1, os.cpu_count() or 1)

    log.info("1. generating the data")
    train = generate(work / "train", target_bytes=int(args.gb * 1e9), images=None, domains=("photo",), lo=224,
                     hi=512, seed=0, workers=workers)
    evals = generate(imports / "eval", target_bytes=None, images=args.eval_images, domains=("painting", "sketch"),
                     lo=224, hi=224, seed=1, workers=workers)
    archive = work / "train.zip"
    zip_stored(work / "train", archive)

    log.info("2. starting the service")
    proc, base_url, key = start_service(work, imports)
    try:
        log.info("3. uploading %.2f GB with a cut", archive.stat().st_size / 1e9)
        from saft_client import Client

        ds, up = upload_with_cut(base_url, key, archive, work / "data", work / "cache", proc.pid)
        up["direct"] = upload_direct(base_url, key, archive, work / "cache", proc.pid)
        up["cp_mb_s"] = disk_copy(archive, work)
        up["sha256_mb_s"] = sha256_pass(archive)
        up["ratio_to_cp"] = up["throughput_mb_s"] / up["cp_mb_s"]
        up["direct"]["ratio_to_cp"] = up["direct"]["throughput_mb_s"] / up["cp_mb_s"]
        log.info("upload: %s", up)

        log.info("4. importing the eval set by path")
        with Client(base_url, key, timeout=3600) as c:
            t0 = time.perf_counter()
            eval_ds = c.datasets.import_path(imports / "eval", name="eval")
            import_s = time.perf_counter() - t0
        log.info("5. the job")
        job = run_job(base_url, key, ds.id, eval_ds.id, args.shots)
    except BaseException:
        log.exception("the benchmark failed")
        raise
    finally:
        proc.terminate()  # saft serve stops its worker too
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    log.info("6. the floor")
    floor = floor_and_plain(imports / "eval", args.batch_size, workers=0)
    train_decode = decode_rate(work / "train", 2000, args.batch_size)
    job["train_images"] = job["train_images"] or args.shots * len(
        [d for d in (work / "train").iterdir() if d.is_dir()])
    stage = job["metrics"]["seconds_evaluating"]
    ev = {**floor, "stage_s": stage, "ratio_to_floor": stage / floor["floor_s"],
          "ratio_to_plain": stage / floor["plain_pass_s"]}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"Python {platform.python_version()}", "args": {k: _shown(v) for k, v in vars(args).items()},
              "data": {"train": train, "eval": evals}, "upload": up,
              "import_s": import_s, "evaluating": ev, "job": job, "train_decode_per_s": train_decode}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "scale.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
