"""One job through the whole service on a GPU: stage timings, training images per second, GPU utilisation.

``saft serve`` on the embedded default (SQLite store and queue) in a fresh data folder, with ``SAFT_DEVICE`` set;
a few hundred generated images uploaded through the Python client; one SAFT job on a random-init model (no
weights to download) followed to its end over the event stream. While it runs, a thread samples the GPU's
utilisation (NVML, or ``nvidia-smi`` where NVML is not importable) every 0.2 s; the samples that fall inside the
training stage (from its ``stage`` event to the next) give the utilisation during training.

On CUDA: ViT-B/16 at 224 px, batch 128, data-loader workers chosen by the core, bf16 autocast. ``--device cpu``
rehearses the same path with saft-tiny at 64 px in seconds (no GPU samples).

Run: ``python -m benchmarks.gpu_e2e [--device cuda|cpu] [--out DIR] [--per-class N] [--epochs E] [--batch B]``;
writes ``DIR/gpu-e2e.json`` and ``DIR/gpu-e2e.md`` (default ``DIR`` ``var/gpu-check``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
# device type -> model, image size, images per class, batch, epochs
PLANS: dict[str, dict[str, Any]] = {
    "cuda": {"model": "ViT-B-16", "size": 224, "per_class": 128, "batch": 128, "epochs": 4},
    "cpu": {"model": "saft-tiny", "size": 64, "per_class": 8, "batch": 8, "epochs": 1},
}
SAMPLE_S = 0.2


class GpuSampler:
    """Samples the GPU's utilisation (percent) in a thread: ``samples`` is [(unix time, percent)]."""

    def __init__(self, index: int = 0) -> None:
        self.samples: list[tuple[float, float]] = []
        self.source = "none"
        self._stop = threading.Event()
        self._read = self._reader(index)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _reader(self, index: int) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "nvml"
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no NVML (no GPU, or the library is missing): try nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            argv = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return lambda: float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()[0])
        return None

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.samples.append((time.time(), self._read()))
            except Exception:  # a failed read is a missing sample, not a failed benchmark
                continue

    def between(self, start: float, end: float) -> list[float]:
        return [u for t, u in self.samples if start <= t <= end]


def _saft(*args: str) -> list[str]:
    return [sys.executable, "-m", "saft_cli", *args]


class Service:
    """``saft serve`` in a fresh data folder, with its own API key; stopped (worker included) on exit."""

    def __init__(self, data_dir: Path, device: str, **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFT_")}
        self.env.update(SAFT_DATA_DIR=str(data_dir), SAFT_DEVICE=device, PYTHONUNBUFFERED="1", **env)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = data_dir.parent / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        keys = subprocess.run(_saft("keys", "create", "--tenant", "gpu-check"), cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300, check=True)
        self.key = keys.stdout.strip().splitlines()[-1]
        port = self.url.rsplit(":", 1)[1]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(_saft("serve", "--port", port), cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"saft serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"saft serve was not ready after 180 s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)

    def client(self) -> Any:
        from saft_client import Client

        return Client(self.url, api_key=self.key)


def _stage_windows(events: list[Any], end: float) -> dict[str, tuple[float, float]]:
    """{stage: (start, end)} in unix seconds, from the job's ``stage`` events."""
    starts = [(e.data.get("stage") or e.message.split()[-1], e.created_at.timestamp())
              for e in events if e.kind == "stage"]
    return {name: (t, starts[i + 1][1] if i + 1 < len(starts) else end) for i, (name, t) in enumerate(starts)}


def run(device: str, out: Path, *, per_class: int | None = None, epochs: int | None = None,
        batch: int | None = None) -> dict[str, Any]:
    from saft_worlds.shapes import render_shapes

    plan = dict(PLANS["cuda" if device.startswith("cuda") else "cpu"])
    plan.update({k: v for k, v in (("per_class", per_class), ("epochs", epochs), ("batch", batch)) if v})
    with tempfile.TemporaryDirectory(prefix="saft-gpu-e2e-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        train = render_shapes(root / "images" / "train", per_class=plan["per_class"], seed=0, size=plan["size"])
        held_out = render_shapes(root / "images" / "eval", per_class=max(2, plan["per_class"] // 4), seed=1,
                                 size=plan["size"])
        generate_s = time.perf_counter() - t
        n_train = sum(1 for _ in train.rglob("*.png"))
        with Service(root / "data", device) as service, service.client() as c:
            t = time.perf_counter()
            ds = c.datasets.upload(train, name="train")
            ev = c.datasets.upload(held_out, name="held-out")
            upload_s = time.perf_counter() - t
            events: list[Any] = []
            with GpuSampler() as sampler:
                job = c.jobs.create(ds, model=plan["model"], pretrained="none", epochs=plan["epochs"],
                                    batch_size=plan["batch"], scoring_batch_size=plan["batch"],
                                    validation_fraction=0.1, eval_datasets=[ev])
                final = c.jobs.wait(job, on_event=events.append, timeout=1800)
                finished = time.time()
            evaluations = [e.model_dump(mode="json") for e in c.jobs.evaluations(final)]
            if final.status != "succeeded":
                raise RuntimeError(f"job {final.id} ended {final.status}: {final.error}\n{service.tail()}")
    windows = _stage_windows(events, finished)
    metrics = final.metrics
    # the core says how many images it trains on (the validation split held out) in its first message
    said = [int(e.message.split()[0]) for e in events if e.kind == "message" and " training images in " in e.message]
    train_images = said[0] if said else n_train * 0.9
    seconds_training = metrics.get("seconds_training") or 0.0
    util = sampler.between(*windows["training"]) if "training" in windows else []
    result = {
        "device": device, "plan": plan, "images": n_train, "train_images": train_images, "generate_s": generate_s, "upload_s": upload_s,
        "job_id": final.id, "stages_s": {k.removeprefix("seconds_"): v for k, v in metrics.items()
                                         if k.startswith("seconds_")},
        "job_wall_s": (final.finished_at - final.started_at).total_seconds()
        if final.finished_at and final.started_at else None,
        "training_images_per_s": train_images * plan["epochs"] / seconds_training if seconds_training else None,
        "train_steps": metrics.get("train_steps"), "peak_memory_mb": metrics.get("peak_memory_mb"),
        "gpu_util": {"source": sampler.source, "interval_s": SAMPLE_S, "samples_training": len(util),
                     "mean": statistics.mean(util) if util else None,
                     "median": statistics.median(util) if util else None, "min": min(util) if util else None},
        "evaluations": evaluations,
        "when": datetime.now().isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-e2e.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "gpu-e2e.md").write_text(markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    p, u = r["plan"], r["gpu_util"]
    lines = [
        f"# One job through the service on `{r['device']}`", "",
        f"`saft serve` (embedded default), {r['images']} generated {p['size']} px images ({r['train_images']} trained on), {p['model']} "
        f"(random init), SAFT, batch {p['batch']}, {p['epochs']} epochs, validation 10 %.", "",
        "| stage | seconds |", "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in r["stages_s"].items()],
        "", f"Job wall time {r['job_wall_s'] or 0:.1f} s; upload {r['upload_s']:.1f} s; "
        f"training {r['training_images_per_s'] or 0:.1f} images/s; peak memory {r['peak_memory_mb'] or 0:,.0f} MB.",
    ]
    if u["samples_training"]:
        lines.append(f"GPU utilisation during training ({u['source']}, every {u['interval_s']} s, "
                     f"{u['samples_training']} samples): mean {u['mean']:.0f} %, median {u['median']:.0f} %, "
                     f"min {u['min']:.0f} %.")
    else:
        lines.append("GPU utilisation: not sampled (no GPU, or no sample inside the training stage).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="SAFT_DEVICE of the worker: cuda (default) or cpu")
    ap.add_argument("--out", default=str(ROOT / "var" / "gpu-check"), help="directory for gpu-e2e.json/.md")
    ap.add_argument("--per-class", type=int, default=None, help="images per class (3 classes)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args(argv)
    result = run(args.device, Path(args.out), per_class=args.per_class, epochs=args.epochs, batch=args.batch)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
