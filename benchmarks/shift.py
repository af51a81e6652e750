"""Distribution-shift benchmark: SAFT vs zero-shot, full fine-tuning, LoRA and WiSE-FT.

Protocol (fixed with zero-shot and full fine-tuning only; results/protocol.md tells how, and why it was revised
once after the first full run):
1. Few-shot fine-tuning (``--shots`` per class, default 64) on one domain of the procedural world
   (``--train-domain``), per seed a fresh draw of the training images.
2. Test sets, the same for every seed and method: the training domain (ID), a shifted resample of it ("v2",
   ``world.Shift.v2``: rotation, scale, palette, lighting), every other domain (OOD), and base-to-new: a second
   fine-tuning on half of the classes (``BASE``), tested on the other half (``NEW``) zero-shot, in the
   training domain.
3. Each method's learning rate and epochs are chosen on a validation set of the training domain (a separate
   render, never a test set), with seed 0, from the grid ``GRIDS``; the choice is then used for every seed.
4. Methods: zero-shot; full fine-tuning; SAFT at ratio 0.001 and a ratio sweep; LoRA through ``peft`` on the
   MLP linears (``c_fc``, ``c_proj``) of both towers: open_clip's attention keeps q/k/v in one raw
   ``in_proj_weight`` and calls ``out_proj`` through ``F.multi_head_attention_forward``, so LoRA cannot reach
   attention without rewriting the model; WiSE-FT, the weight average of the zero-shot and the fully
   fine-tuned model (alpha 0.5).

Run: ``python -m benchmarks.shift [--quick] [--out DIR]``; with real CLIP weights and ImageFolder sets:
``python -m benchmarks.shift --model ViT-B-16 --pretrained openai --shots 16 --train-dir imagenet/train --val-dir
imagenet/val-split --id-dir imagenet/val --v2-dir imagenetv2 --ood sketch=imagenet-sketch --ood a=imagenet-a
--ood r=imagenet-r``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saft_core import world
from saft_core.checkpoint import apply_delta, load_delta
from saft_core.config import DataConfig, FinetuneConfig, ModelSpec, ScoringConfig, TrainConfig
from saft_core.data import load_dataset, make_loader, sample_shots
from saft_core.evaluation import evaluate_dataset
from saft_core.models import load_model
from saft_core.pipeline import finetune
from saft_core.training import train
from saft_core.zeroshot import Prompts

log = logging.getLogger("benchmarks.shift")

BASE = world.CLASSES[0::2]
NEW = world.CLASSES[1::2]
TEMPLATES = ("a photo of a {}.",)

# (learning rates, epochs) searched per method on the validation set. Epochs are fixed at 10: in the protocol
# run (full fine-tuning only, results/protocol.md) 10 and 20 epochs tied on the validation set at the best
# learning rate, and one value halves the search. Each grid is three learning rates at half-decade steps around
# the method's best point on the validation set of the first protocol (results/protocol.md).
GRIDS: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "full": ((3e-5, 1e-4, 3e-4), (10,)),
    "saft": ((3e-4, 1e-3, 3e-3), (10,)),
    "lora": ((3e-4, 1e-3, 3e-3), (10,)),
}
QUICK_GRIDS = {"full": ((1e-4,), (10,)), "saft": ((1e-3,), (10,)), "lora": ((1e-3,), (10,))}
# The ratio sweep's learning rates: the best one moves by orders of magnitude with the ratio (fewer entries,
# larger steps), so each ratio searches a wide grid.
SWEEP_LRS = (1e-4, 1e-3, 1e-2)
SWEEP = (0.0001, 0.001, 0.01, 0.1)


@dataclass
class Plan:
    model: ModelSpec
    train_domain: str
    shots: int
    seeds: list[int]
    test_per_class: int
    val_per_class: int
    batch_size: int
    grids: dict[str, tuple[tuple[float, ...], tuple[int, ...]]]
    sweep: tuple[float, ...]
    sweep_lrs: tuple[float, ...] = ()  # learning rates each sweep ratio searches; () = SAFT's grid
    methods: tuple[str, ...] = ("full", "saft", "lora")
    device: str | None = None
    # Filled for real-data runs (ImageFolder paths) instead of rendering the world.
    train_dir: str | None = None
    val_dir: str | None = None
    tests: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- data
class WorldData:
    """Renders every set once into a temporary directory."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.root = plan, root
        d = plan.train_domain
        self.tests: dict[str, str] = {"id": self._render("test_id", d, plan.test_per_class, 1000)}
        self.tests["v2"] = self._render("test_v2", d, plan.test_per_class, 1001, shift=world.Shift.v2())
        for i, other in enumerate(x for x in world.DOMAINS if x != d):
            self.tests[f"ood_{other}"] = self._render(f"test_{other}", other, plan.test_per_class, 1002 + i)
        self.new_test = self._render("test_new", d, plan.test_per_class, 1000, classes=NEW)
        self.base_test = self._render("test_base", d, plan.test_per_class, 1000, classes=BASE)
        self.val = self._render("val", d, plan.val_per_class, 500)
        self.base_val = self._render("val_base", d, plan.val_per_class, 500, classes=BASE)

    def _render(self, name: str, domain: str, per_class: int, seed: int, *, classes=world.CLASSES,
                shift: world.Shift | None = None) -> str:
        path = self.root / name
        if not path.exists():
            world.render_image_folder(path, domain, per_class, seed, classes=classes, shift=shift)
        return str(path)

    def train(self, seed: int, classes=world.CLASSES) -> str:
        tag = "all" if classes == world.CLASSES else "base"
        return self._render(f"train_{tag}_{seed}", self.plan.train_domain, self.plan.shots, 100 + seed,
                            classes=classes)


class FolderData:
    """Real ImageFolder sets (e.g. ImageNet and its variants); k-shot subsets are sampled per seed."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.root = plan, root
        self.tests = dict(plan.tests)
        self.val = plan.val_dir
        self.new_test = self.base_test = self.base_val = None

    def train(self, seed: int, classes=None) -> str:
        ds = sample_shots(load_dataset(self.plan.train_dir, verify=False), self.plan.shots, seed)
        manifest = self.root / f"train_{seed}.csv"
        manifest.write_text("".join(f"{p},{ds.classes[y]}\n" for p, y in ds.samples))
        return str(manifest)


# ----------------------------------------------------------------------------------------------- methods
def evaluate(spec: ModelSpec, sets: dict[str, str], *, checkpoint: Path | None = None, alpha: float = 1.0,
             model: torch.nn.Module | None = None, device: str | None = None) -> dict[str, float]:
    """top-1 on each set of a base model, base + checkpoint at alpha, or a given (already tuned) model."""
    loaded = load_model(spec, device)
    if model is not None:
        loaded.model = model
    elif checkpoint is not None:
        apply_delta(loaded.model, load_delta(checkpoint), alpha=alpha, base_sha256=loaded.sha256)
    return {name: evaluate_dataset(loaded, load_dataset(path, verify=False), name=name, variant="fine-tuned",
                                   templates=TEMPLATES).top1 for name, path in sets.items()}


def run_saft_or_full(plan: Plan, method: str, lr: float, epochs: int, train_dir: str, seed: int, out: Path,
                     ratio: float = 0.001) -> tuple[Path, dict[str, Any]]:
    cfg = FinetuneConfig(
        model=plan.model,
        data=DataConfig(train=train_dir, templates=TEMPLATES),
        train=TrainConfig(method=method, ratio=ratio, epochs=epochs, batch_size=plan.batch_size, learning_rate=lr,
                          seed=seed, warmup_steps=5),
        scoring=ScoringConfig(batch_size=plan.batch_size),
        device=plan.device, evaluate_zero_shot=False,
    )
    result = finetune(cfg, out)
    info = {"train_loss_last_epoch": result.metrics["train_loss_last_epoch"]}
    if result.mask is not None:
        top = sorted(result.mask.tensors, key=lambda t: -t.selected)[:8]
        info["mask_top_tensors"] = {t.name: t.selected for t in top}
    return result.checkpoint_path, info


class LoraUpdate:
    """LoRA adapters (peft) as the trainable state of the shared training loop."""

    TARGETS = ("c_fc", "c_proj")

    def __init__(self, model: torch.nn.Module, rank: int = 8) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        for p in model.parameters():
            p.requires_grad_(False)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(self.TARGETS))
        self.model = inject_adapter_in_model(cfg, model)
        self.params = [p for n, p in self.model.named_parameters() if "lora_" in n]
        for p in self.params:
            p.requires_grad_(True)

    def trainable(self) -> list[torch.Tensor]:
        return self.params

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        return None

    def after_step(self) -> None:
        return None

    def merged(self) -> torch.nn.Module:
        from peft.tuners.lora import LoraLayer

        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.merge()
        return self.model


def run_lora(plan: Plan, lr: float, epochs: int, train_dir: str, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(seed)
    loaded = load_model(plan.model, plan.device)
    ds = load_dataset(train_dir, verify=False)
    update = LoraUpdate(loaded.model)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, TEMPLATES, loaded.device)
    loader = make_loader(ds, loaded.preprocess_eval, plan.batch_size, shuffle=True, seed=seed)
    cfg = TrainConfig(epochs=epochs, batch_size=plan.batch_size, learning_rate=lr, seed=seed, warmup_steps=5)
    stats = train(loaded.model, loader, prompts, update, cfg, device=loaded.device)
    n_train = sum(p.numel() for p in update.params)
    return update.merged().eval(), {"train_loss_last_epoch": stats.mean_last_epoch_loss, "lora_params": n_train}


def fit_and_score(plan: Plan, method: str, hp: dict[str, Any], train_dir: str, seed: int, sets: dict[str, str],
                  work: Path) -> tuple[dict[str, float], dict[str, float] | None, dict[str, Any]]:
    """Train one method; return (scores, WiSE-FT scores for full, info)."""
    if method == "lora":
        model, info = run_lora(plan, hp["lr"], hp["epochs"], train_dir, seed)
        return evaluate(plan.model, sets, model=model, device=plan.device), None, info
    ckpt, info = run_saft_or_full(plan, method, hp["lr"], hp["epochs"], train_dir, seed, work,
                                  ratio=hp.get("ratio", 0.001))
    scores = evaluate(plan.model, sets, checkpoint=ckpt, device=plan.device)
    wise = evaluate(plan.model, sets, checkpoint=ckpt, alpha=0.5, device=plan.device) if method == "full" else None
    return scores, wise, info


def select(plan: Plan, method: str, data, work: Path, ratio: float = 0.001, val: str | None = None,
           train_dir: str | None = None, grid: tuple[tuple[float, ...], tuple[int, ...]] | None = None,
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search on the validation set with seed 0; returns the best hyper-parameters and the table."""
    lrs, epochs = grid or plan.grids[method]
    if len(lrs) == 1 and len(epochs) == 1:  # nothing to choose (--quick): no selection runs
        return {"lr": lrs[0], "epochs": epochs[0], **({"ratio": ratio} if method == "saft" else {})}, []
    val = val or data.val
    train_dir = train_dir or data.train(plan.seeds[0])
    table = []
    for lr in lrs:
        for ep in epochs:
            hp = {"lr": lr, "epochs": ep, **({"ratio": ratio} if method == "saft" else {})}
            scores, _, _ = fit_and_score(plan, method, hp, train_dir, plan.seeds[0], {"val": val}, work / "sel")
            table.append({**hp, "val_top1": scores["val"]})
            log.info("select %s %s: val top-1 %.3f", method, hp, scores["val"])
    best = max(table, key=lambda r: (r["val_top1"], -r["epochs"], -r["lr"]))
    return {k: v for k, v in best.items() if k != "val_top1"}, table


# ----------------------------------------------------------------------------------------------- report
def summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    keys = per_seed[0].keys()
    mean = {k: statistics.fmean(r[k] for r in per_seed) for k in keys}
    std = {k: (statistics.stdev(r[k] for r in per_seed) if len(per_seed) > 1 else 0.0) for k in keys}
    return {**{k: round(v, 4) for k, v in mean.items()}, "std": {k: round(v, 4) for k, v in std.items()},
            "seeds": len(per_seed), "per_seed": per_seed}


def with_aggregates(scores: dict[str, float]) -> dict[str, float]:
    ood = [v for k, v in scores.items() if k.startswith("ood_")]
    out = dict(scores)
    if ood:
        out["ood_avg"] = statistics.fmean(ood)
    if "v2" in scores:
        out["shift_avg"] = statistics.fmean(ood + [scores["v2"]])
    return out


def markdown(results: dict[str, Any]) -> str:
    methods = results["methods"]
    cols = [c for c in ("id", "v2", "ood_avg", "new_classes", "base_classes") if c in next(iter(methods.values()))]
    ood_cols = sorted(k for k in next(iter(methods.values())) if k.startswith("ood_") and k != "ood_avg")
    head = ["method", *cols, *ood_cols, "hyper-parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in methods.items():
        cells = [f"{100 * m[c]:.1f} ± {100 * m['std'][c]:.1f}" for c in cols + ood_cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m.get('hyperparameters', '')} |")
    if results.get("saft_ratio_sweep"):
        cols = [c for c in cols if c in next(iter(results["saft_ratio_sweep"].values()))]
        lines += ["", "SAFT ratio sweep (top-1 %, mean ± std over seeds):", "",
                  "| ratio | " + " | ".join(cols) + " | hyper-parameters |", "|---|" + "---|" * (len(cols) + 1)]
        for ratio, m in results["saft_ratio_sweep"].items():
            cells = [f"{100 * m[c]:.1f} ± {100 * m['std'][c]:.1f}" for c in cols]
            lines.append(f"| {ratio} | " + " | ".join(cells) + f" | {m.get('hyperparameters', '')} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    metrics = [c for c in ("id", "v2", "ood_avg", "new_classes") if c in next(iter(methods.values()))]
    sweep_metrics = [c for c in metrics if c not in ("new_classes",)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(methods)
    for i, (name, m) in enumerate(methods.items()):
        xs = [j + i * width for j in range(len(metrics))]
        axes[0].bar(xs, [100 * m[c] for c in metrics], width, yerr=[100 * m["std"][c] for c in metrics],
                    label=name, capsize=2)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics)
    axes[0].set_ylabel("top-1 accuracy (%)")
    axes[0].set_title(f"{results['protocol']['model']}: {results['protocol']['shots']}-shot on "
                      f"{results['protocol']['train_domain']}")
    axes[0].legend(fontsize=8)
    sweep = results.get("saft_ratio_sweep") or {}
    if sweep:
        ratios = [float(r) for r in sweep]
        for c in sweep_metrics:
            axes[1].errorbar(ratios, [100 * sweep[r][c] for r in sweep], yerr=[100 * sweep[r]["std"][c] for r in sweep],
                             marker="o", label=c, capsize=2)
        for c, style in (("id", ":"), ("ood_avg", "--")):
            if c in methods.get("full", {}):
                axes[1].axhline(100 * methods["full"][c], linestyle=style, color="grey", label=f"full {c}")
        axes[1].set_xscale("log")
        axes[1].set_xlabel("SAFT ratio")
        axes[1].set_title("SAFT ratio sweep")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="saft-shift-") as tmp:
        root = Path(tmp)
        data = WorldData(plan, root) if plan.train_dir is None else FolderData(plan, root)
        log.info("data ready in %.0f s", time.time() - t0)
        zero = with_aggregates(evaluate(plan.model, data.tests, device=plan.device))
        if data.new_test:
            zero |= evaluate(plan.model, {"new_classes": data.new_test, "base_classes": data.base_test},
                             device=plan.device)
        # zero-shot is deterministic: the same for every seed (std 0)
        results: dict[str, Any] = {"methods": {"zero-shot": summarise([zero]) | {
            "hyperparameters": "-", "seeds": len(plan.seeds)}}}
        selection: dict[str, Any] = {}
        per_method: dict[str, list[dict[str, float]]] = {m: [] for m in plan.methods}
        if "full" in plan.methods:
            per_method["wise-ft"] = []
        info_log: dict[str, list[dict[str, Any]]] = {m: [] for m in per_method}
        chosen: dict[str, dict[str, Any]] = {}
        for method in plan.methods:
            chosen[method], selection[method] = select(plan, method, data, root / method)
            if data.new_test:
                chosen[method + "_b2n"], selection[method + "_b2n"] = select(
                    plan, method, data, root / (method + "_b2n"), val=data.base_val,
                    train_dir=data.train(plan.seeds[0], BASE))
        for seed in plan.seeds:
            for method in plan.methods:
                scores, wise, info = fit_and_score(plan, method, chosen[method], data.train(seed), seed, data.tests,
                                                   root / f"{method}_{seed}")
                scores = with_aggregates(scores)
                wise = with_aggregates(wise) if wise else None
                if data.new_test:
                    b2n, wise_b2n, _ = fit_and_score(
                        plan, method, chosen[method + "_b2n"], data.train(seed, BASE), seed,
                        {"new_classes": data.new_test, "base_classes": data.base_test}, root / f"{method}_b2n_{seed}")
                    scores |= b2n
                    if wise is not None:
                        wise |= wise_b2n
                per_method[method].append(scores)
                info_log[method].append({"seed": seed, **info})
                if wise is not None:
                    per_method["wise-ft"].append(wise)
                log.info("seed %d %s: %s", seed, method, {k: round(v, 3) for k, v in scores.items()})
        for method, rows in per_method.items():
            hp = chosen["full" if method == "wise-ft" else method]
            results["methods"][method] = summarise(rows) | {
                "hyperparameters": (hp | {"alpha": 0.5}) if method == "wise-ft" else hp,
                "runs": info_log.get(method, [])}
        # the SAFT ratio sweep: each ratio gets its own learning rate (at SAFT's chosen epochs), chosen on the
        # validation set; ratio 0.001 is the SAFT run above
        sweep = {}
        for ratio in plan.sweep if "saft" in plan.methods else ():
            if ratio == 0.001:
                hp, rows = chosen["saft"], per_method["saft"]
            else:
                lr_grid = (plan.sweep_lrs or plan.grids["saft"][0], (chosen["saft"]["epochs"],))
                hp = select(plan, "saft", data, root / f"sweep_{ratio}", ratio, grid=lr_grid)[0]
                rows = [with_aggregates(fit_and_score(plan, "saft", hp, data.train(seed), seed, data.tests,
                                                      root / f"sweep_{ratio}_{seed}")[0])
                        for seed in plan.seeds]
            sweep[str(ratio)] = summarise([{k: v for k, v in r.items() if k not in ("new_classes", "base_classes")}
                                           for r in rows]) | {"hyperparameters": hp}
        results["saft_ratio_sweep"] = sweep
    results["selection"] = selection
    results["protocol"] = {
        "model": f"{plan.model.name}/{plan.model.pretrained}", "train_domain": plan.train_domain,
        "shots": plan.shots, "seeds": plan.seeds, "test_per_class": plan.test_per_class,
        "val_per_class": plan.val_per_class, "batch_size": plan.batch_size, "templates": list(TEMPLATES),
        "base_classes": list(BASE), "new_classes": list(NEW), "grids": {k: list(map(list, v)) for k, v in plan.grids.items()},
        "sweep_lrs": list(plan.sweep_lrs or plan.grids["saft"][0]), "lora_targets": list(LoraUpdate.TARGETS), "methods": list(plan.methods), "seconds": round(time.time() - t0),
        "torch_threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shift.json").write_text(json.dumps(results, indent=1))
    (out_dir / "shift.md").write_text(markdown(results))
    plot(results, out_dir / "shift.png")
    return results


def parse_grid(text: str) -> tuple[str, tuple[tuple[float, ...], tuple[int, ...]]]:
    """``full=3e-5,1e-4:10,20`` -> ("full", ((3e-5, 1e-4), (10, 20)))."""
    method, _, rest = text.partition("=")
    lrs, _, epochs = rest.partition(":")
    if method not in GRIDS:
        raise ValueError(f"method must be one of {', '.join(GRIDS)}")
    if not lrs or not epochs:
        raise ValueError("expected METHOD=LR[,LR...]:EPOCHS[,EPOCHS...]")
    lr_values = tuple(float(x) for x in lrs.split(","))
    epoch_values = tuple(int(x) for x in epochs.split(","))
    if not all(math.isfinite(v) and v > 0 for v in lr_values + epoch_values):
        raise ValueError("learning rates and epochs must be positive numbers")
    return method, (lr_values, epoch_values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, small sets, no grid search (about 2 min on 2 cores)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", default="saft-tiny")
    ap.add_argument("--pretrained", default="world")
    ap.add_argument("--train-domain", default="painting", choices=world.DOMAINS,
                    help="domain to fine-tune on (default painting: see results/protocol.md for why)")
    ap.add_argument("--shots", type=int, default=64,
                    help="training images per class (default 64: see results/protocol.md for why not 16)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--methods", default="full,saft,lora",
                    help="comma-separated subset of full,saft,lora (zero-shot always; WiSE-FT comes with full)")
    ap.add_argument("--train-dir", help="real data: ImageFolder of training images (k-shot sampled per seed)")
    ap.add_argument("--val-dir", help="real data: validation ImageFolder of the training distribution")
    ap.add_argument("--id-dir", help="real data: in-distribution test ImageFolder")
    ap.add_argument("--v2-dir", help="real data: a fresh resample of the training distribution")
    ap.add_argument("--ood", action="append", default=[], metavar="NAME=DIR", help="real data: a shifted test set")
    ap.add_argument("--grid", action="append", default=[], metavar="METHOD=LRS:EPOCHS",
                    help="replace one method's search grid, e.g. full=3e-5,1e-4,3e-4:10,20 (used to fix the protocol)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)

    tests: dict[str, str] = {}
    if args.train_dir:
        if not args.id_dir or not args.val_dir:
            ap.error("--train-dir needs --id-dir and --val-dir (learning rates are chosen on the validation "
                     "set, never on a test set)")
        tests["id"] = args.id_dir
        if args.v2_dir:
            tests["v2"] = args.v2_dir
        for item in args.ood:
            name, _, path = item.partition("=")
            tests[f"ood_{name}"] = path
    grids = dict(QUICK_GRIDS if args.quick else GRIDS)
    for item in args.grid:
        try:
            grids.update([parse_grid(item)])
        except ValueError as e:
            ap.error(f"--grid {item!r}: {e}")
    # The sweep searches the wide SWEEP_LRS with the default grids; a given (or --quick) SAFT grid otherwise.
    sweep_lrs = SWEEP_LRS if grids["saft"] is GRIDS["saft"] else ()
    plan = Plan(
        model=ModelSpec(args.model, args.pretrained), train_domain=args.train_domain, shots=args.shots,
        seeds=list(range(1 if args.quick else args.seeds)),
        test_per_class=args.test_per_class or (12 if args.quick else 50),
        val_per_class=8 if args.quick else 32, batch_size=args.batch_size,
        grids=grids, sweep_lrs=sweep_lrs, sweep=(0.001,) if args.quick else SWEEP,
        methods=tuple(m for m in ("full", "saft", "lora") if m in args.methods.split(",")),
        device=args.device, train_dir=args.train_dir, val_dir=args.val_dir, tests=tests,
    )
    results = run(plan, Path(args.out))
    print(markdown(results))
    print(f"wrote {args.out}/shift.json, shift.md, shift.png in {results['protocol']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
