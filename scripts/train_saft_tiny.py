"""Pre-train ``saft-tiny`` contrastively (open_clip's ClipLoss) on a seeded corpus of the procedural world.

The result is the bundled ``saft-tiny`` / ``world`` weights (fp16 safetensors) and a model card. Runs on CPU in
about half an hour on 2 cores with the defaults:

    python scripts/train_saft_tiny.py --out saft_core/weights/saft-tiny-world.safetensors

Everything is seeded: the corpus, the init, the batch order.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saft_core.checkpoint import save_weights
from saft_core.config import ModelSpec
from saft_core.models import load_model
from saft_worlds import world

log = logging.getLogger("train_saft_tiny")

# Painting and clutter are rarer in the corpus than photos, sketches and cartoons, as renditions and
# cluttered scenes are rarer than plain photos on the web.
DOMAIN_WEIGHTS = {"photo": 1.0, "sketch": 1.0, "cartoon": 1.0, "painting": 0.6, "clutter": 0.6}


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    start, count, seed = args
    images, captions = [], []
    for image, text in world.corpus(count, seed * 1000 + start, DOMAIN_WEIGHTS):
        images.append(np.asarray(image, dtype=np.uint8))
        captions.append(text)
    return np.stack(images), captions


def build_corpus(n: int, seed: int, workers: int) -> tuple[np.ndarray, list[str]]:
    chunk = 1000
    jobs = [(s, min(chunk, n - s), seed) for s in range(0, n, chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = list(tqdm(pool.imap(_render_chunk, jobs), total=len(jobs), desc="rendering corpus", file=sys.stderr))
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=40_000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-per-class", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    t0 = time.time()

    # 1) corpus
    images, captions = build_corpus(args.pairs, args.seed, args.workers)
    log.info("corpus: %d pairs in %.0f s; e.g. %s", len(captions), time.time() - t0, captions[:3])

    # 2) model (random init, seeded) and tokenised captions
    loaded = load_model(ModelSpec("saft-tiny", None, init_seed=args.seed), "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens = tokenizer(captions)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def to_batch(idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

    # 3) contrastive training
    loss_fn = open_clip.ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = len(captions) // args.batch_size
    total = steps_per_epoch * args.epochs

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))

    rng = np.random.default_rng(args.seed)
    model.train()
    step = 0
    bar = tqdm(total=total, desc="pre-training", file=sys.stderr)
    for _ in range(args.epochs):
        order = rng.permutation(len(captions))
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * args.batch_size:(b + 1) * args.batch_size])
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            img_f, txt_f, scale = model(to_batch(idx), tokens[idx])
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", scale=f"{float(scale):.1f}")
    bar.close()
    train_seconds = time.time() - t0
    model.eval()

    # 4) zero-shot accuracy per domain on renders with seeds the corpus never used
    import tempfile

    from saft_core.datasets import load_dataset
    from saft_core.evaluation import evaluate_dataset

    zero_shot = {}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in world.DOMAINS:
            root = world.render_image_folder(Path(tmp) / domain, domain, args.eval_per_class, seed=10_000 + args.seed)
            score = evaluate_dataset(loaded, load_dataset(root), name=domain, variant="zero-shot",
                                     templates=["a photo of a {}."])
            zero_shot[domain] = round(score.top1, 4)
    log.info("zero-shot top-1 per domain: %s", zero_shot)

    # 5) fp16 weights + card
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    recipe = {k: v for k, v in vars(args).items() if k != "out"}
    meta = {"format": "open_clip-state-dict", "base_model": "saft-tiny", "recipe": json.dumps(recipe),
            "domain_weights": json.dumps(DOMAIN_WEIGHTS), "zero_shot_top1": json.dumps(zero_shot)}
    out = save_weights(args.out, state, meta)
    report = {"recipe": recipe, "domain_weights": DOMAIN_WEIGHTS, "zero_shot_top1": zero_shot,
              "train_seconds": round(train_seconds), "final_loss": float(loss), "bytes": out.stat().st_size,
              "torch": torch.__version__, "open_clip": open_clip.__version__}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
