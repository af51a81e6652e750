"""Data-loading throughput: images per second through the training loader with 0, 1, 2, ... worker processes.

What is measured: decoding the image files and open_clip's preprocessing at ViT-B/16's 224 px (resize, crop,
normalise; ``--augment`` for the training augmentation), batched, as ``saft finetune --workers N`` and
``SAFT_DATA_WORKERS`` run it; no model. Every epoch builds a fresh iterator, so worker start-up is paid each
epoch, as in training. The baseline is 0 workers (everything in the main process), in the same run.

Run: ``python -m benchmarks.loader [--workers 0,1,2] [--images-per-class 32] [--size 320] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from open_clip import image_transform

from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_worlds import world


def epoch_seconds(loader: torch.utils.data.DataLoader) -> float:
    t0 = time.perf_counter()
    n = 0
    for images, _ in loader:
        n += images.shape[0]
    assert n == len(loader.dataset)
    return time.perf_counter() - t0


def measure(data_dir: Path, workers: list[int], *, batch_size: int, epochs: int, augment: bool) -> list[dict]:
    dataset = load_dataset(data_dir, verify=False)
    transform = image_transform(224, is_train=augment)
    rows = []
    for w in workers:
        loader = make_loader(dataset, transform, batch_size, shuffle=True, seed=0, num_workers=w)
        times = [epoch_seconds(loader) for _ in range(epochs)]
        median = statistics.median(times)
        rows.append({"workers": w, "images": len(dataset), "epoch_seconds": [round(t, 3) for t in times],
                     "images_per_second": round(len(dataset) / median, 1)})
    base = next((r["images_per_second"] for r in rows if r["workers"] == 0), rows[0]["images_per_second"])
    for r in rows:
        r["speedup_vs_0"] = round(r["images_per_second"] / base, 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts; 0 is the baseline")
    ap.add_argument("--images-per-class", type=int, default=32, help="12 classes of the world's painting domain")
    ap.add_argument("--size", type=int, default=320, help="side of the rendered PNG files, in pixels")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per worker count; the median is reported")
    ap.add_argument("--augment", action="store_true", help="open_clip's training augmentation")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",")]
    if any(w < 0 for w in workers) or args.epochs < 1 or args.images_per_class < 1:
        ap.error("workers must be >= 0, epochs and images per class >= 1")
    with tempfile.TemporaryDirectory(prefix="saft-loader-") as tmp:
        t0 = time.perf_counter()
        world.render_image_folder(Path(tmp), "painting", args.images_per_class, 0, size=args.size)
        print(f"rendered {12 * args.images_per_class} images of {args.size} px in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        rows = measure(Path(tmp), workers, batch_size=args.batch_size, epochs=args.epochs, augment=args.augment)
    print(f"| workers | images/s | speed-up vs 0 | epoch seconds ({args.epochs} epochs) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['images_per_second']} | {r['speedup_vs_0']}x | "
              f"{', '.join(map(str, r['epoch_seconds']))} |")
    print(f"cores: {torch.get_num_threads()} torch threads in the main process", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
