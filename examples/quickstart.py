"""From a folder of labelled images to a classified image, through the SAFT service's Python client.

    pip install ./clients/python             # httpx + pydantic; no torch needed on this machine
    export SAFT_URL=http://127.0.0.1:8000 SAFT_API_KEY=saft_...     # what `make run` printed
    saft world render --domain painting --per-class 32 --seed 1 --out painting    # (needs the project)
    saft world render --domain sketch --per-class 10 --seed 2 --out sketch
    python examples/quickstart.py painting/ --eval sketch/   # ImageFolders: one sub-folder of images per class

Uploads the folders (zipped on the fly), fine-tunes with SAFT on 1 % of the parameters (20 % of each class held
out for validation), follows the job's events, prints the frontier, the recommended alpha and any training
warning, downloads the sparse checkpoint (SHA-256 verified) and classifies the first image of the eval folder
(else of the training folder) at the recommended alpha.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saft_client import Client, JobEvent


def show(event: JobEvent) -> None:
    if event.kind == "progress" and "train_loss" in event.data:
        print(f"  {event.data['stage']} {event.data['step']}/{event.data['total_steps']}  loss {event.data['train_loss']:.4f}")
    elif event.kind != "progress":
        print(f"  {event.message}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="ImageFolder: <class>/<image>")
    ap.add_argument("--eval", type=Path, help="a shifted ImageFolder of the same classes, to evaluate on")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default="delta.safetensors")
    args = ap.parse_args()

    with Client() as c:  # SAFT_URL, SAFT_API_KEY
        ds = c.datasets.upload(args.folder, progress=True)
        print(f"dataset {ds.id}: {ds.num_images} images, classes {ds.class_names}")
        evals = [c.datasets.upload(args.eval, progress=True)] if args.eval else []
        job = c.jobs.create(dataset=ds, eval_datasets=evals, ratio=0.01, epochs=args.epochs, batch_size=32)
        job = c.jobs.wait(job, on_event=show, raise_on_failure=True)
        for e in c.jobs.evaluations(job):  # each set at each alpha, from zero-shot (0) to fine-tuned (1)
            print(f"  {e.dataset_name} at alpha {e.alpha:g} ({e.model}): top1 {e.top1:.1%}")
        print("recommended alpha:", job.checkpoint.recommended_alpha)
        for w in job.warnings:  # training went wrong though the job succeeded
            print(f"warning [{w.code}]: {w.message}\n  hint: {w.hint}")
        print("checkpoint:", c.jobs.download_checkpoint(job, args.out))
        folder = args.eval or args.folder
        image = next(p for p in sorted(folder.rglob("*")) if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        best = c.classify([image], job=job, alpha="recommended").results[0].predictions[0]
        print(f"{image}: {best.label} ({best.score:.2f})")


if __name__ == "__main__":
    main()
