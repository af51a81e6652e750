"""One fine-tuning run end to end: loading -> scoring -> masking -> training -> evaluating -> saving.

Each stage is a function of its own module; this file only wires them and reports through ``Callbacks``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import checkpoint_metadata, load_mask, read_metadata, save_delta, save_mask
from .config import FinetuneConfig, SaftConfig
from .data import make_loader, resolve_workers
from .datasets import ImageDataset, load_dataset, sample_shots, split_validation, verify_images
from .evaluation import evaluate_along_alpha
from .frontier import ALPHA_GRID, recommend_alpha
from .health import VALIDATION, training_warnings
from .masking import Mask, select_topk
from .models import load_model
from .precision import resolved_precision
from .results import Callbacks, EvalScore, FinetuneResult
from .scoring import score_parameters
from .snapshot import Snapshots, fingerprint
from .training import DenseUpdate, SparseUpdate, train
from .zeroshot import Prompts

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
MASK_FILE = "mask.safetensors"


def _load_data(cfg: FinetuneConfig) -> tuple[ImageDataset, ImageDataset | None, dict[str, ImageDataset]]:
    """The training set (after the validation split and the shots), the validation split and the eval sets.

    Only the images the run trains and validates on are decoded here, so that a bad one fails the run before
    it trains; the rest of a large training set is never read, and the eval sets are read once, by the
    evaluating stage itself (an unreadable eval image fails the run there, naming the file)."""
    data = cfg.data
    full = load_dataset(data.train, verify=False)
    train_set, val_set = split_validation(full, data.validation_fraction, cfg.train.seed)
    if data.shots is not None:
        train_set = sample_shots(train_set, data.shots, cfg.train.seed)
    verify_images(train_set)
    verify_images(val_set)
    evals = {name: load_dataset(path, verify=False) for name, path in data.eval.items()}
    return train_set, (val_set if len(val_set) else None), evals


def _saved_mask(snapshots: Snapshots | None) -> Mask | None:
    """The mask an earlier attempt of this run chose, if it saved one for this configuration."""
    if snapshots is None or not snapshots.mask_path.is_file():
        return None
    try:
        meta = read_metadata(snapshots.mask_path)
        if meta.get("fingerprint") != snapshots.fingerprint:
            return None
        numel: dict[str, int] = json.loads(meta["numel"])  # the model's parameter order
        loaded = load_mask(snapshots.mask_path)  # safetensors sorts names: restore the model's order
        indices = {name: loaded[name] for name in numel if name in loaded}
        return Mask(indices, numel, int(meta["k"]), float(meta["ratio"]))
    except Exception as e:  # unreadable: score again rather than fail
        log.warning("ignoring the saved mask %s: %s", snapshots.mask_path, e)
        return None


def _save_mask_for_resume(snapshots: Snapshots | None, mask: Mask) -> None:
    if snapshots is None:
        return
    meta = {"fingerprint": snapshots.fingerprint, "numel": json.dumps(mask.numel), "k": str(mask.k),
            "ratio": repr(mask.ratio)}
    try:
        snapshots.dir.mkdir(parents=True, exist_ok=True)
        # A training state saved beside an earlier mask (one that could not be read back) is not this mask's.
        snapshots.state_path.unlink(missing_ok=True)
        save_mask(snapshots.mask_path, mask.indices, meta)
    except OSError as e:
        log.warning("could not save the mask for resuming to %s: %s", snapshots.dir, e)


def _recommend(evaluations: list[EvalScore]) -> float | None:
    """The frontier's rule over the validation rows; None without a validation split."""
    val = [e for e in evaluations if e.dataset == VALIDATION]
    return recommend_alpha({e.alpha: e.top1 for e in val}, val[0].n) if val else None


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far, MiB: ``torch.cuda.max_memory_allocated`` on a GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # POSIX only; the service runs on Linux

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def finetune(cfg: FinetuneConfig, out_dir: str | Path, callbacks: Callbacks | None = None) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data.train`` with ``cfg.method``; write the checkpoint
    (and, for SAFT, the mask) into ``out_dir``. Raises SaftError subclasses on bad input, Cancelled on
    request; nothing is written to ``out_dir`` unless the run completes."""
    cb = callbacks or Callbacks()
    out = Path(out_dir)
    timings: dict[str, float] = {}
    current: str | None = None
    started = time.perf_counter()

    def stage(name: str | None) -> None:
        """Close the running stage's timer; open ``name`` (None: finished)."""
        nonlocal current, started
        now = time.perf_counter()
        if current:
            timings[f"seconds_{current}"] = now - started
        current, started = name, now
        if name:
            cb.check_cancel()
            cb.on_stage(name)

    templates = list(cfg.data.templates)

    # 1) loading
    stage("loading")
    torch.manual_seed(cfg.train.seed)
    loaded = load_model(cfg.model, cfg.device)
    model, device = loaded.model, loaded.device
    train_set, val_set, eval_sets = _load_data(cfg)
    # The count itself from here on: snapshots fingerprint it (augmentations drawn in workers depend on it), so an
    # attempt resumed on a machine that chooses another count starts again instead of resuming another run.
    chosen = "" if cfg.data.workers is not None else f" (chosen for {torch.device(device).type})"
    n_workers = resolve_workers(cfg.data.workers, device)
    cfg = replace(cfg, data=replace(cfg.data, workers=n_workers))
    workers = f"{n_workers} data-loader workers" if n_workers else "no data-loader workers"
    precision = resolved_precision(torch.device(device), cfg.precision)
    cb.on_message("info", f"{len(train_set)} training images in {len(train_set.classes)} classes on {device} "
                          f"({precision}), {workers}{chosen}")
    prompts = Prompts.build(loaded.tokenizer, train_set.class_names, templates, device)
    num_params = sum(p.numel() for p in model.parameters())
    pin_memory = torch.device(device).type == "cuda"

    # 2) scoring and 3) masking (SAFT only); a resumed run takes the mask its first attempt chose
    saft = cfg.method if isinstance(cfg.method, SaftConfig) else None
    snap = cfg.snapshot
    snapshots = None
    if snap.dir is not None:
        interval = snap.interval_s if saft else snap.dense_interval_s
        snapshots = Snapshots(snap.dir, fingerprint(cfg, loaded.sha256), interval)
    mask = _saved_mask(snapshots) if saft else None
    if mask is not None:
        cb.on_message("info", f"resuming: the mask of an earlier attempt ({mask.k} entries) is reused")
        update: SparseUpdate | DenseUpdate = SparseUpdate(model, mask, cfg.train.grad_engine)
    elif saft:
        stage("scoring")
        score_loader = make_loader(train_set, loaded.preprocess_eval, saft.scoring_batch_size,
                                   num_workers=n_workers, pin_memory=pin_memory)
        scores = score_parameters(
            model, score_loader, prompts, saft, device=device,
            num_batches=len(score_loader), callbacks=cb, precision=precision,
        )
        stage("masking")
        mask = select_topk(scores, saft.ratio)
        del scores
        _save_mask_for_resume(snapshots, mask)
        update = SparseUpdate(model, mask, cfg.train.grad_engine)
    else:
        update = DenseUpdate(model)

    # 4) training
    stage("training")
    transform = loaded.preprocess_train if cfg.train.augment else loaded.preprocess_eval
    loader = make_loader(train_set, transform, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                         num_workers=n_workers, pin_memory=pin_memory)
    stats = train(model, loader, prompts, update, cfg.train, device=device, callbacks=cb, snapshots=snapshots,
                  precision=precision)
    deltas = update.deltas()
    engine = getattr(update, "engine", None)
    if engine is not None and engine.fallbacks:
        cb.on_message("info", f"sparse gradient engine: {len(engine.fallbacks)} tensors took the dense gradient "
                              f"(op not known to the engine): {', '.join(engine.fallbacks)}")

    # 5) evaluating: the validation split and every eval set along the alpha grid (the robustness frontier),
    # then the fine-tuned weights back; alpha 0 is the zero-shot baseline. SAFT's switch writes k entries,
    # always cheaper than reading a batch again: each image is read once. Full fine-tuning's switch writes every
    # weight: the evaluation times it against a read and picks the order (evaluation.read_once_pays). Batches:
    # SAFT's scoring batch (it held a forward and a backward pass), else the training batch.
    stage("evaluating")
    sets = ([(VALIDATION, val_set)] if val_set is not None else []) + list(eval_sets.items())
    alphas = [a for a in ALPHA_GRID if a > 0.0 or cfg.evaluate_zero_shot]
    evaluations = evaluate_along_alpha(
        loaded, sets, alphas, update.set_weights, templates=templates,
        batch_size=saft.scoring_batch_size if saft else cfg.train.batch_size,
        callbacks=cb, workers=n_workers, order="batch" if isinstance(update, SparseUpdate) else "auto",
        precision=precision,
    )
    update.set_weights(1.0)
    recommended = _recommend(evaluations)

    # 6) saving (atomic writes: a cancelled or failed run leaves no partial file)
    stage("saving")
    k = mask.k if mask else num_params
    meta = checkpoint_metadata(
        base_model=loaded.spec.name, pretrained=loaded.spec.pretrained, base_sha256=loaded.sha256,
        ratio=saft.ratio if saft else None, k=k, classes=train_set.class_names,
        templates=templates, method=cfg.method.type, init_seed=cfg.model.init_seed,
        recommended_alpha=recommended,
    )
    mask_path = save_mask(out / MASK_FILE, mask.indices, meta) if mask else None
    ckpt = save_delta(out / CHECKPOINT_FILE, deltas, meta)  # written last: its presence means "complete"
    stage(None)

    ckpt_bytes = ckpt.stat().st_size
    metrics = {
        **timings,
        "train_steps": float(stats.steps),
        "train_loss_first": stats.first_loss,
        "train_loss_last": stats.last_loss,
        "train_loss_last_epoch": stats.mean_last_epoch_loss,
        "num_params": float(num_params),
        "k": float(k),
        "checkpoint_bytes": float(ckpt_bytes),
        "model_bytes_fp32": float(num_params * 4),
        "compression": num_params * 4 / ckpt_bytes,
        "peak_memory_mb": peak_memory_mb(device),
    }
    warnings = training_warnings(
        first_loss=stats.first_loss, final_loss=stats.mean_last_epoch_loss, num_classes=len(train_set.classes),
        evaluations=evaluations, recommended_alpha=recommended, learning_rate=cfg.train.learning_rate,
    )
    return FinetuneResult(
        checkpoint_path=ckpt, mask_path=mask_path,
        mask=mask.summary(num_params) if mask else None, evaluations=evaluations,
        classes=train_set.class_names, base_sha256=loaded.sha256, model=loaded.spec, metrics=metrics,
        recommended_alpha=recommended, warnings=warnings,
    )
