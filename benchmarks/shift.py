"""Distribution-shift benchmark: every method's robustness frontier along alpha, SAFT's variants, zero-shot.

Protocol (results/protocol.md fixes it and tells how; round 3 added the frontiers and SAFT's variants):
1. Few-shot fine-tuning (``--shots`` per class, default 64) on one domain of the procedural world
   (``--train-domain``), per seed a fresh draw of the training images.
2. Test sets, the same for every seed and method: the training domain (ID), a shifted resample of it ("v2",
   ``world.Shift.v2``: rotation, scale, palette, lighting), every other domain (OOD), and base-to-new: a second
   fine-tuning on half of the classes (``BASE``), tested on the other half (``NEW``) zero-shot, in the
   training domain.
3. Each method's learning rate is chosen on a validation render of the training domain (never a test set),
   with seed 0, at alpha 1, from the grid ``GRIDS``; the choice is then used for every seed and for the
   base-class fine-tuning.
4. Methods: full fine-tuning; SAFT at ratio 0.001 with each eligibility variant of ``VARIANTS``; LoRA through
   ``peft`` on the MLP linears (``c_fc``, ``c_proj``) of both towers, merged into the weights (open_clip's
   attention keeps q/k/v in one raw ``in_proj_weight`` and calls ``out_proj`` through
   ``F.multi_head_attention_forward``, so LoRA cannot reach attention without rewriting the model).
5. Every fine-tuned model is a delta from the pre-trained weights (SAFT's sparse one, full fine-tuning's and
   merged LoRA's dense ones), evaluated at every alpha of ``ALPHAS``: alpha 0 is zero-shot, alpha 1 the
   fine-tuned model, and full fine-tuning at alpha 0.5 is WiSE-FT. Each method's frontier is its mean (ID,
   OOD average) along alpha over the seeds.
6. Per seed, the product's rule (``saft_core.frontier.recommend_alpha``: one standard error on the validation
   render) picks an alpha; the report gives each method's test scores at the alpha its rule picks, the best
   OOD average its frontier reaches at an ID of at least full fine-tuning's minus one point, and the
   pre-registered choice of SAFT's default variant and alpha (``decide``), made on validation renders only.

Run: ``python -m benchmarks.shift [--quick] [--out DIR]``; with real CLIP weights and ImageFolder sets:
``python -m benchmarks.shift --model ViT-B-16 --pretrained openai --shots 16 --train-dir imagenet/train --val-dir
imagenet/val-split --id-dir imagenet/val --v2-dir imagenetv2 --ood sketch=imagenet-sketch --ood a=imagenet-a
--ood r=imagenet-r`` (no base-to-new there, so no variant decision: the frontiers and the tables).
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

from saft_core.checkpoint import SparseDelta, apply_delta, load_delta
from saft_core.config import DataConfig, FinetuneConfig, FullConfig, ModelSpec, SaftConfig, TrainConfig
from saft_core.data import make_loader
from saft_core.datasets import load_dataset, sample_shots
from saft_core.evaluation import accuracy
from saft_core.frontier import ALPHA_GRID, recommend_alpha
from saft_core.models import load_model
from saft_core.pipeline import finetune
from saft_core.training import train
from saft_core.zeroshot import Prompts, build_head
from saft_worlds import world

log = logging.getLogger("benchmarks.shift")

BASE = world.CLASSES[0::2]
NEW = world.CLASSES[1::2]
TEMPLATES = ("a photo of a {}.",)
ALPHAS = ALPHA_GRID

# SAFT's eligibility variants, pre-registered in results/protocol.md (round 3): SaftConfig fields.
VARIANTS: dict[str, dict[str, Any]] = {
    "saft": {},  # every parameter eligible: the paper's default and today's
    "saft-noemb": {"exclude_embeddings": True},  # token, positional and patch embeddings ineligible
    "saft-nonorm": {"exclude_norms": True, "exclude_biases": True},  # LayerNorms and biases ineligible
    "saft-image": {"towers": "image"},  # the image tower only
}
METHODS: tuple[str, ...] = ("full", *VARIANTS, "lora")
DEFAULT_VARIANT = "saft"

# (learning rates, epochs) searched per method on the validation set. Epochs are fixed at 10 (round 2 of the
# protocol: 10 and 20 tied); three learning rates at half-decade steps around each method's best point.
_SPARSE_GRID = ((3e-4, 1e-3, 3e-3), (10,))
GRIDS: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "full": ((3e-5, 1e-4, 3e-4), (10,)), **dict.fromkeys(VARIANTS, _SPARSE_GRID), "lora": ((3e-4, 1e-3, 3e-3), (10,)),
}
QUICK_GRIDS = {"full": ((1e-4,), (10,)), **dict.fromkeys(VARIANTS, ((1e-3,), (10,))), "lora": ((1e-3,), (10,))}
# A variant replaces the default only when its validation score beats the default's by more than this.
VARIANT_MARGIN = 0.01


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
    methods: tuple[str, ...] = METHODS
    alphas: tuple[float, ...] = ALPHAS
    render_seed: int = 0  # added to every render seed: a configuration drawn from other renders
    device: str | None = None
    # Filled for real-data runs (ImageFolder paths) instead of rendering the world.
    train_dir: str | None = None
    val_dir: str | None = None
    tests: dict[str, str] = field(default_factory=dict)
    # Hyper-parameters chosen by an earlier run (``--selection-from``): these methods skip their search.
    preselected: dict[str, dict[str, Any]] = field(default_factory=dict)
    preselected_from: str | None = None


# ----------------------------------------------------------------------------------------------- data
class WorldData:
    """Renders every set once into a temporary directory."""

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan, self.root = plan, root
        d, n = plan.train_domain, plan.test_per_class
        self.tests: dict[str, str] = {"id": self._render("test_id", d, n, 1000)}
        self.tests["v2"] = self._render("test_v2", d, n, 1001, shift=world.Shift.v2())
        for i, other in enumerate(x for x in world.DOMAINS if x != d):
            self.tests[f"ood_{other}"] = self._render(f"test_{other}", other, n, 1002 + i)
        self.val = self._render("val", d, plan.val_per_class, 500)
        # base-to-new: tests and validation renders of each half of the classes, in the training domain
        self.b2n_tests = {"base_classes": self._render("test_base", d, n, 1000, classes=BASE),
                          "new_classes": self._render("test_new", d, n, 1000, classes=NEW)}
        self.b2n_val = {"val_base": self._render("val_base", d, plan.val_per_class, 500, classes=BASE),
                        "val_new": self._render("val_new", d, plan.val_per_class, 500, classes=NEW)}

    def _render(self, name: str, domain: str, per_class: int, seed: int, *, classes=world.CLASSES,
                shift: world.Shift | None = None) -> str:
        path = self.root / name
        if not path.exists():
            world.render_image_folder(path, domain, per_class, seed + self.plan.render_seed, classes=classes,
                                      shift=shift)
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
        self.b2n_tests: dict[str, str] = {}
        self.b2n_val: dict[str, str] = {}

    def train(self, seed: int, classes=None) -> str:
        ds = sample_shots(load_dataset(self.plan.train_dir, verify=False), self.plan.shots, seed)
        manifest = self.root / f"train_{seed}.csv"
        manifest.write_text("".join(f"{p},{ds.classes[y]}\n" for p, y in ds.samples))
        return str(manifest)


# ----------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalSet:
    classes: list[str]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    n: int


class Evaluator:
    """The pre-trained model loaded once and every evaluation set decoded once; scores any delta along alpha.

    Weights at alpha are ``base + alpha * delta`` through the core's ``apply_delta``, the same code the
    service's classify uses; the text head is rebuilt at every alpha, as the text tower moves too.
    """

    def __init__(self, plan: Plan, sets: dict[str, str]) -> None:
        self.loaded = load_model(plan.model, plan.device)
        self.model = self.loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.sets = {name: self._decode(path) for name, path in sets.items()}

    def _decode(self, path: str) -> EvalSet:
        ds = load_dataset(path, verify=False)
        return EvalSet(ds.class_names, list(make_loader(ds, self.loaded.preprocess_eval, 256)), len(ds))

    @torch.no_grad()
    def _restore(self, names) -> None:
        params = dict(self.model.named_parameters())
        for name in names:
            params[name].copy_(self.base[name])

    def _top1(self, s: EvalSet) -> float:
        head = build_head(self.model, self.loaded.tokenizer, s.classes, TEMPLATES, self.loaded.device)
        return accuracy(self.model, s.batches, head, device=self.loaded.device)[0]

    def frontier(self, delta: SparseDelta | None, alphas, names) -> dict[float, dict[str, float]]:
        """{alpha: {set: top-1}}; ``delta`` None is the pre-trained model (the same at every alpha)."""
        out: dict[float, dict[str, float]] = {}
        touched = list(delta.tensors) if delta is not None else []
        try:
            for a in alphas:
                self._restore(touched)
                if delta is not None and a:
                    apply_delta(self.model, delta, alpha=a)
                out[a] = {n: self._top1(self.sets[n]) for n in names}
        finally:
            self._restore(touched)
        return out

    def delta_of(self, model: torch.nn.Module) -> SparseDelta:
        """A tuned model's weights as a dense delta from the base (merged LoRA)."""
        tensors = {}
        for name, p in model.named_parameters():
            name = name.replace(".base_layer", "")
            if "lora_" in name or name not in self.base:
                continue
            d = p.detach().float() - self.base[name].float()
            if bool(d.any()):
                tensors[name] = (None, d)
        return SparseDelta(tensors, {})


# ----------------------------------------------------------------------------------------------- methods
def run_saft_or_full(plan: Plan, method: str, lr: float, epochs: int, train_dir: str, seed: int,
                     out: Path) -> tuple[SparseDelta, dict[str, Any]]:
    cfg = FinetuneConfig(
        model=plan.model,
        data=DataConfig(train=train_dir, templates=TEMPLATES),
        train=TrainConfig(epochs=epochs, batch_size=plan.batch_size, learning_rate=lr, seed=seed, warmup_steps=5),
        method=FullConfig() if method == "full"
        else SaftConfig(ratio=0.001, scoring_batch_size=plan.batch_size, **VARIANTS.get(method, {})),
        device=plan.device, evaluate_zero_shot=False,
    )
    result = finetune(cfg, out)
    info: dict[str, Any] = {"train_loss_last_epoch": result.metrics["train_loss_last_epoch"]}
    if result.mask is not None:
        top = sorted(result.mask.tensors, key=lambda t: -t.selected)[:8]
        info["mask_top_tensors"] = {t.name: t.selected for t in top}
        info["k"] = result.mask.k
    return load_delta(result.checkpoint_path), info


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


def fit(plan: Plan, ev: Evaluator, method: str, hp: dict[str, Any], train_dir: str, seed: int,
        work: Path) -> tuple[SparseDelta, dict[str, Any]]:
    """Train one method; its result as a delta from the pre-trained weights, and what to log."""
    if method == "lora":
        model, info = run_lora(plan, hp["lr"], hp["epochs"], train_dir, seed)
        return ev.delta_of(model), info
    return run_saft_or_full(plan, method, hp["lr"], hp["epochs"], train_dir, seed, work)


def select(plan: Plan, ev: Evaluator, method: str, data, work: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search on the validation render with seed 0, at alpha 1; the best hyper-parameters and the table."""
    if method in plan.preselected:
        return plan.preselected[method], [{"from": plan.preselected_from}]
    lrs, epochs = plan.grids[method]
    if len(lrs) == 1 and len(epochs) == 1:  # nothing to choose (--quick): no selection runs
        return {"lr": lrs[0], "epochs": epochs[0]}, []
    train_dir = data.train(plan.seeds[0])
    table = []
    for lr in lrs:
        for ep in epochs:
            hp = {"lr": lr, "epochs": ep}
            delta, _ = fit(plan, ev, method, hp, train_dir, plan.seeds[0], work / "sel")
            top1 = ev.frontier(delta, (1.0,), ["val"])[1.0]["val"]
            table.append({**hp, "val_top1": top1})
            log.info("select %s %s: val top-1 %.3f", method, hp, top1)
    best = max(table, key=lambda r: (r["val_top1"], -r["epochs"], -r["lr"]))
    return {k: v for k, v in best.items() if k != "val_top1"}, table


# ----------------------------------------------------------------------------------------------- report
def with_aggregates(scores: dict[str, float]) -> dict[str, float]:
    ood = [v for k, v in scores.items() if k.startswith("ood_")]
    out = dict(scores)
    if ood:
        out["ood_avg"] = statistics.fmean(ood)
    if "v2" in scores:
        out["shift_avg"] = statistics.fmean(ood + [scores["v2"]])
    return out


def summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    keys = per_seed[0].keys()
    mean = {k: statistics.fmean(r[k] for r in per_seed) for k in keys}
    std = {k: (statistics.stdev(r[k] for r in per_seed) if len(per_seed) > 1 else 0.0) for k in keys}
    return {**{k: round(v, 4) for k, v in mean.items()}, "std": {k: round(v, 4) for k, v in std.items()},
            "seeds": len(per_seed)}


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def seed_record(curve: dict[float, dict[str, float]], b2n: dict[float, dict[str, float]] | None, n_val: int,
                n_val_base: int) -> dict[str, Any]:
    """One seed of one method: the frontier (tests merged with base-to-new at each alpha), the recommended
    alpha of each fine-tuning by the product's rule, the scores there, and the validation harmonic mean."""
    points = {a: with_aggregates({k: v for k, v in s.items() if k != "val"}) | {"val": s["val"]}
              for a, s in curve.items()}
    rec = recommend_alpha({a: s["val"] for a, s in curve.items()}, n_val)
    out: dict[str, Any] = {"frontier": points, "recommended_alpha": rec}
    if b2n:
        for a, s in b2n.items():
            points[a] |= s
        rec_b2n = recommend_alpha({a: s["val_base"] for a, s in b2n.items()}, n_val_base)
        out["recommended_alpha_b2n"] = rec_b2n
        # the pre-registered validation score: in-distribution accuracy and accuracy on classes never trained
        # on, both on validation renders of the training domain, each fine-tuning at its recommended alpha
        out["val_hm_recommended"] = harmonic(curve[rec]["val"], b2n[rec_b2n]["val_new"])
        out["val_hm_alpha1"] = harmonic(curve[1.0]["val"], b2n[1.0]["val_new"])
        out["at_recommended"] = {**points[rec], "new_classes": b2n[rec_b2n]["new_classes"],
                                 "base_classes": b2n[rec_b2n]["base_classes"]}
    else:
        out["at_recommended"] = dict(points[rec])
    return out


def summarise_method(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    alphas = list(seeds[0]["frontier"])
    out: dict[str, Any] = {
        "frontier": {str(a): summarise([s["frontier"][a] for s in seeds]) for a in alphas},
        "at_recommended": summarise([s["at_recommended"] for s in seeds]),
        "recommended_alpha": [s["recommended_alpha"] for s in seeds],
        "per_seed": seeds,
    }
    if "val_hm_recommended" in seeds[0]:
        out["recommended_alpha_b2n"] = [s["recommended_alpha_b2n"] for s in seeds]
        out["val_hm_recommended"] = round(statistics.fmean(s["val_hm_recommended"] for s in seeds), 4)
        out["val_hm_alpha1"] = round(statistics.fmean(s["val_hm_alpha1"] for s in seeds), 4)
    return out


def best_ood_at_id(frontier: dict[str, dict[str, Any]], target_id: float) -> float | None:
    """The highest OOD average on the mean frontier (linear between its alpha points) where ID >= target."""
    pts = sorted((float(a), s["id"], s["ood_avg"]) for a, s in frontier.items())
    best = None
    for (_, id0, ood0), (_, id1, ood1) in zip(pts, pts[1:], strict=False):
        for t in (0.0, 1.0) if id0 == id1 else sorted({0.0, 1.0, (target_id - id0) / (id1 - id0)}):
            if 0.0 <= t <= 1.0:
                i, o = id0 + t * (id1 - id0), ood0 + t * (ood1 - ood0)
                if i >= target_id - 1e-9 and (best is None or o > best):
                    best = o
    if len(pts) == 1 and pts[0][1] >= target_id:
        best = pts[0][2]
    return best


def decide(methods: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The pre-registered choice (results/protocol.md, round 3), on validation renders only:
    - variant: the SAFT variant with the highest validation harmonic mean at its recommended alpha; it
      replaces the default only if it beats the default's by more than ``VARIANT_MARGIN``;
    - alpha: the service recommends (and classifies at) the rule's alpha instead of 1 if, for the chosen
      variant, the harmonic mean at the recommended alpha is at least the one at alpha 1."""
    scored = {m: v["val_hm_recommended"] for m, v in methods.items() if m in VARIANTS and "val_hm_recommended" in v}
    if DEFAULT_VARIANT not in scored:
        return None
    top = max(scored, key=scored.get)
    variant = top if scored[top] > scored[DEFAULT_VARIANT] + VARIANT_MARGIN else DEFAULT_VARIANT
    m = methods[variant]
    return {"variant": variant, "val_hm_recommended": scored, "margin": VARIANT_MARGIN,
            "alpha": "recommended" if m["val_hm_recommended"] >= m["val_hm_alpha1"] else 1.0,
            "variant_val_hm_alpha1": m["val_hm_alpha1"]}


def _pct(m: dict[str, Any], c: str) -> str:
    return f"{100 * m[c]:.1f} ± {100 * m['std'][c]:.1f}" if c in m else "-"


def markdown(results: dict[str, Any]) -> str:
    methods = results["methods"]
    first = next(iter(methods.values()))["frontier"]["1.0"]
    cols = [c for c in ("id", "v2", "ood_avg", "new_classes") if c in first]
    ood_cols = sorted(k for k in first if k.startswith("ood_") and k != "ood_avg")
    zs = next(iter(methods.values()))["frontier"]["0.0"]
    lines = ["Top-1 %, mean ± std over seeds. At alpha 1 (each method as fine-tuned; zero-shot is alpha 0):", "",
             "| method | " + " | ".join(cols + ood_cols) + " | hyper-parameters |", "|---|" + "---|" * (len(cols + ood_cols) + 1),
             "| zero-shot | " + " | ".join(_pct(zs, c) for c in cols + ood_cols) + " | - |"]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(_pct(m["frontier"]["1.0"], c) for c in cols + ood_cols)
                     + f" | {m['hyperparameters']} |")
    if "full" in methods and "0.5" in methods["full"]["frontier"]:
        lines.append("| wise-ft (full at alpha 0.5) | " + " | ".join(
            _pct(methods["full"]["frontier"]["0.5"], c) for c in cols + ood_cols) + " | - |")
    target = results.get("target_id")
    lines += ["", "At the alpha the product's rule recommends (one standard error on the validation render, per seed)"
              + (f", and each frontier's best OOD average at an ID of at least full fine-tuning's minus 1 point "
                 f"({100 * target:.1f} %)" if target is not None else " (no full fine-tuning run: no ID target)") + ":", "",
              "| method | recommended alphas | ID | OOD avg | new classes | best OOD avg at ID target | max ID |",
              "|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        r = m["at_recommended"]
        best = m.get("best_ood_at_target")
        max_id = max(s["id"] for s in m["frontier"].values())
        lines.append(f"| {name} | {', '.join(str(a) for a in m['recommended_alpha'])} | {_pct(r, 'id')} | "
                     f"{_pct(r, 'ood_avg')} | {_pct(r, 'new_classes')} | "
                     f"{'-' if best is None else f'{100 * best:.1f}'} | {100 * max_id:.1f} |")
    alphas = list(next(iter(methods.values()))["frontier"])
    lines += ["", "Frontiers: ID / OOD average at each alpha (mean over seeds):", "",
              "| method | " + " | ".join(f"alpha {a}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for name, m in methods.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * m['frontier'][a]['id']:.1f} / {100 * m['frontier'][a]['ood_avg']:.1f}" for a in alphas) + " |")
    d = results.get("decision")
    if d:
        lines += ["", "Pre-registered choice (validation renders only): harmonic mean of ID validation top-1 and "
                  "new-class validation top-1, each fine-tuning at its recommended alpha:", "",
                  "| variant | validation HM at recommended alpha | at alpha 1 |", "|---|---|---|"]
        for v, hm in d["val_hm_recommended"].items():
            lines.append(f"| {v} | {100 * hm:.1f} | {100 * methods[v]['val_hm_alpha1']:.1f} |")
        lines += ["", f"Chosen: variant **{d['variant']}** (margin {100 * d['margin']:.0f} point over `saft`), "
                  f"alpha **{d['alpha']}**."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for name, m in results["methods"].items():
        alphas = sorted(m["frontier"], key=float)
        ids = [100 * m["frontier"][a]["id"] for a in alphas]
        oods = [100 * m["frontier"][a]["ood_avg"] for a in alphas]
        line, = ax.plot(ids, oods, marker="o", markersize=4, label=name,
                        linestyle="--" if name == "full" else ("-" if name.startswith("saft") else "-."))
        ax.errorbar(ids, oods, xerr=[100 * m["frontier"][a]["std"]["id"] for a in alphas],
                    yerr=[100 * m["frontier"][a]["std"]["ood_avg"] for a in alphas], fmt="none",
                    ecolor=line.get_color(), alpha=0.35, capsize=0)
        r = m["at_recommended"]
        ax.plot([100 * r["id"]], [100 * r["ood_avg"]], marker="*", markersize=13, color=line.get_color(),
                markeredgecolor="black", linestyle="none")
    zs = next(iter(results["methods"].values()))["frontier"]["0.0"]
    ax.plot([100 * zs["id"]], [100 * zs["ood_avg"]], marker="s", color="black", linestyle="none",
            label="zero-shot (alpha 0)")
    if results.get("target_id") is not None:
        ax.axvline(100 * results["target_id"], color="grey", linestyle=":", label="full's ID - 1 point")
    p = results["protocol"]
    ax.set_xlabel("in-distribution top-1 (%)")
    ax.set_ylabel("OOD average top-1 (%)")
    ax.set_title(f"{p['model']}: {p['shots']}-shot on {p['train_domain']}, {len(p['seeds'])} seeds; "
                 f"alpha {min(p['alphas'])}..{max(p['alphas'])}; * = recommended alpha", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="saft-shift-") as tmp:
        root = Path(tmp)
        data = WorldData(plan, root) if plan.train_dir is None else FolderData(plan, root)
        ev = Evaluator(plan, {"val": data.val} | data.tests | data.b2n_tests | data.b2n_val)
        test_names = ["val", *data.tests]
        b2n_names = [*data.b2n_tests, *data.b2n_val]
        log.info("data ready in %.0f s", time.time() - t0)
        selection: dict[str, Any] = {}
        chosen: dict[str, dict[str, Any]] = {}
        for method in plan.methods:
            chosen[method], selection[method] = select(plan, ev, method, data, root / method)
        out_dir.mkdir(parents=True, exist_ok=True)  # so that another run can reuse the choice at once
        (out_dir / "selection.json").write_text(json.dumps({"chosen": chosen, "selection": selection}, indent=1))
        per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in plan.methods}
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in plan.methods}
        for seed in plan.seeds:
            for method in plan.methods:
                delta, info = fit(plan, ev, method, chosen[method], data.train(seed), seed, root / f"{method}_{seed}")
                curve = ev.frontier(delta, plan.alphas, test_names)
                b2n = None
                if data.b2n_tests:
                    delta_b, _ = fit(plan, ev, method, chosen[method], data.train(seed, BASE), seed,
                                     root / f"{method}_b2n_{seed}")
                    b2n = ev.frontier(delta_b, plan.alphas, b2n_names)
                rec = seed_record(curve, b2n, ev.sets["val"].n,
                                  ev.sets["val_base"].n if "val_base" in ev.sets else 0)
                per_seed[method].append(rec)
                runs[method].append({"seed": seed, **info})
                log.info("seed %d %s: alpha 1 %s; recommended alpha %s", seed, method,
                         {k: round(v, 3) for k, v in rec["frontier"][1.0].items()}, rec["recommended_alpha"])
        results: dict[str, Any] = {"methods": {
            m: summarise_method(rows) | {"hyperparameters": chosen[m], "runs": runs[m]} for m, rows in per_seed.items()}}
    if "full" in results["methods"]:
        results["target_id"] = results["methods"]["full"]["frontier"]["1.0"]["id"] - 0.01
        for m in results["methods"].values():
            m["best_ood_at_target"] = best_ood_at_id(m["frontier"], results["target_id"])
    results["decision"] = decide(results["methods"])
    results["selection"] = selection
    results["protocol"] = {
        "model": f"{plan.model.name}/{plan.model.pretrained}", "train_domain": plan.train_domain,
        "shots": plan.shots, "seeds": plan.seeds, "test_per_class": plan.test_per_class,
        "val_per_class": plan.val_per_class, "batch_size": plan.batch_size, "templates": list(TEMPLATES),
        "alphas": list(plan.alphas), "render_seed": plan.render_seed, "variants": VARIANTS,
        "base_classes": list(BASE), "new_classes": list(NEW),
        "grids": {k: list(map(list, v)) for k, v in plan.grids.items() if k in plan.methods},
        "lora_targets": list(LoraUpdate.TARGETS), "methods": list(plan.methods),
        "selection_from": plan.preselected_from,
        "seconds": round(time.time() - t0), "torch_threads": torch.get_num_threads(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shift.json").write_text(json.dumps(results, indent=1))
    (out_dir / "shift.md").write_text(markdown(results))
    plot(results, out_dir / "shift.png")
    return results


def load_selection(path: str, methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Learning rate and epochs per method from an earlier run's ``selection.json`` or ``shift.json``."""
    data = json.loads(Path(path).read_text())
    chosen = data.get("chosen") or {m: v["hyperparameters"] for m, v in data.get("methods", {}).items()
                                    if isinstance(v.get("hyperparameters"), dict)}
    return {m: {"lr": hp["lr"], "epochs": hp["epochs"]} for m, hp in chosen.items() if m in methods}


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
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, small sets, no grid search, full + saft + lora (about 3 min on 2 cores)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--model", default="saft-tiny")
    ap.add_argument("--pretrained", default="world")
    ap.add_argument("--train-domain", default="painting", choices=world.DOMAINS,
                    help="domain to fine-tune on (default painting: see results/protocol.md for why)")
    ap.add_argument("--render-seed", type=int, default=0,
                    help="offset added to every render seed (the confirmation configuration draws other renders)")
    ap.add_argument("--shots", type=int, default=64,
                    help="training images per class (default 64: see results/protocol.md for why not 16)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated subset of {','.join(METHODS)} (default all; --quick: full,saft,lora)")
    ap.add_argument("--alphas", default=None, help="comma-separated alphas in [0, 1] (default 0,0.25,0.5,0.75,1)")
    ap.add_argument("--selection-from", metavar="JSON",
                    help="take the learning rate and epochs of the methods found in an earlier run's selection.json "
                         "or shift.json instead of searching them")
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
    methods = (args.methods or ("full,saft,lora" if args.quick else ",".join(METHODS))).split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    try:
        alphas = tuple(sorted({float(a) for a in args.alphas.split(",")})) if args.alphas else ALPHAS
    except ValueError:
        ap.error("--alphas: comma-separated numbers in [0, 1]")
    if not all(0.0 <= a <= 1.0 for a in alphas) or 0.0 not in alphas or 1.0 not in alphas:
        ap.error("--alphas: numbers in [0, 1], including 0 (zero-shot) and 1 (fine-tuned)")
    methods_order = tuple(m for m in METHODS if m in methods)
    selected: dict[str, dict[str, Any]] = {}
    if args.selection_from:
        try:
            selected = load_selection(args.selection_from, methods_order)
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--selection-from {args.selection_from}: {e}")
    plan = Plan(
        model=ModelSpec(args.model, args.pretrained), train_domain=args.train_domain, shots=args.shots,
        seeds=list(range(1 if args.quick else args.seeds)),
        test_per_class=args.test_per_class or (12 if args.quick else 30),
        val_per_class=8 if args.quick else 32, batch_size=args.batch_size, grids=grids,
        methods=methods_order, alphas=alphas, render_seed=args.render_seed,
        preselected=selected, preselected_from=args.selection_from,
        device=args.device, train_dir=args.train_dir, val_dir=args.val_dir, tests=tests,
    )
    results = run(plan, Path(args.out))
    print(markdown(results))
    print(f"wrote {args.out}/shift.json, shift.md, shift.png in {results['protocol']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
