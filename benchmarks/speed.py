"""Step time and memory of SAFT's two gradient engines against full fine-tuning, LoRA and the floor.

Variants (each in its own process, interleaved over rounds; the training loop of ``saft_core.training``):

* ``full``: every parameter trains (``DenseUpdate``; it keeps a copy of the base weights for the delta);
* ``saft-dense``: SAFT with ``grad_engine="dense"`` (dense gradient of every selected tensor, then gather);
* ``saft-sparse``: SAFT with ``grad_engine="sparse"`` (weight gradients only at the mask);
* ``lora``: PEFT LoRA r=8 on the MLP linears (``c_fc``, ``c_proj``) of both towers (``benchmarks.shift``);
* ``floor``: every weight frozen, activation gradients through every block of both towers and no weight
  gradient at all: the least any method that trains weights of every layer can cost.

Two masks at ratio 0.001, used by both SAFT variants: ``scored`` (SAFT's scoring on the benchmark batch) and
``spread`` (top-k of random scores: touches every tensor). Models: saft-tiny, and random-init ViT-B/16 at
224 px (skipped by ``--quick``). Step time: median over the timed steps of every round (a warm-up step per
process is dropped); peak memory: the process's max RSS (model included; CPU); optimizer state: AdamW's
two fp32 moments per trainable entry; checkpoint: the file the method saves (SAFT's delta file, LoRA's
adapter tensors in safetensors; full fine-tuning's fp32 delta of every weight, computed, not written).

Also measured: the crossover density of ``saft_core.sparse_grad`` (gathered products against a row GEMM on a
ViT-B/16 MLP shape) and ``select_topk`` over ViT-B/16's and ViT-L/14's number of scores.

On CUDA (``--device cuda``): random-init ViT-B/16 at batch 128 and ViT-L/14 at batch 32, 224 px, bf16 autocast
(the training loop's ``precision="auto"``); every variant of a model runs in one process (a fresh model per
variant, built on the GPU), step times come from CUDA events recorded after each step's synchronisation, peak
memory from ``torch.cuda.max_memory_allocated`` (reset per variant; the model included), the crossover sweep runs
on the GPU in bf16, and ``torch.profiler`` records one SAFT sparse step per model (``profile-MODEL.txt``: where
the time goes).

Run: ``python -m benchmarks.speed [--device cpu|cuda] [--quick] [--models M ...] [--out DIR] [--rounds R]
[--steps N] [--threads T]``; writes ``DIR/speed.json`` and ``DIR/speed.md`` (``speed-cuda.*`` on CUDA; default
``DIR`` ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("benchmarks.speed")

ROOT = Path(__file__).resolve().parents[1]
RATIO = 1e-3
CLASSES = 10
TEMPLATES = ["a photo of a {}."]
VARIANTS = ("full", "saft-dense", "saft-sparse", "lora", "floor")
MASKS = ("scored", "spread")
# device -> model -> (image size, batch size); saft-tiny keeps its own 64 px
SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "cpu": {"saft-tiny": (64, 8), "ViT-B-16": (224, 8)},
    "cuda": {"ViT-B-16": (224, 128), "ViT-L-14": (224, 32), "saft-tiny": (64, 128)},
}
DEFAULT_MODELS = {"cpu": ["saft-tiny", "ViT-B-16"], "cuda": ["ViT-B-16", "ViT-L-14"]}
SELECTION_MODELS = ("ViT-B-16", "ViT-L-14")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ child processes
def _build(name: str, image_size: int, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """A random-init model, initialised on ``device`` itself (seconds for ViT-L/14 on a GPU, not a minute)."""
    import open_clip

    import saft_core.models  # noqa: F401  (registers saft-tiny)

    torch.manual_seed(0)
    with torch.device(device):  # open_clip builds on the CPU and then moves to ``device`` otherwise
        model = open_clip.create_model(name, force_image_size=image_size, device=device)
    return model, open_clip.get_tokenizer(name)


def _batch(image_size: int, batch: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One batch, already on ``device``: the benchmark times the step, not the copy of the images."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(batch, 3, image_size, image_size, generator=g), torch.arange(batch) % CLASSES
    return images.to(device), labels.to(device)


def _prompts(tokenizer: Any, device: str = "cpu"):
    from saft_core.zeroshot import Prompts

    return Prompts.build(tokenizer, [f"class {i}" for i in range(CLASSES)], TEMPLATES, device)


class FloorUpdate:
    """No weight trains; the inputs of both transformers require grad, so backward runs through every block."""

    def __init__(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for stack in (model.visual.transformer, model.transformer):
            stack.register_forward_pre_hook(lambda _m, args: (args[0].detach().requires_grad_(), *args[1:]))
        self.unused = torch.zeros(1, requires_grad=True)  # AdamW needs one tensor; it never gets a gradient

    def trainable(self) -> list[torch.Tensor]:
        return [self.unused]

    def forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        return None

    def after_step(self) -> None:
        return None


def _load_mask(path: str, device: str = "cpu"):
    from saft_core.masking import Mask

    saved = torch.load(path)
    saved["indices"] = {n: i.to(device) for n, i in saved["indices"].items()}
    return Mask(**saved)


def _memory_mb(device: torch.device) -> float:
    """Peak so far: ``max_memory_allocated`` on CUDA (reset per variant), the process's max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StepClock:
    """Stamps after every training step: CUDA events on a GPU (read after one synchronisation at the end),
    ``perf_counter`` on the CPU. The loop reads the loss after each step, which synchronises, so a step's
    interval holds its own kernels and not the next one's."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []
        self.start = self._stamp()

    def _stamp(self) -> Any:
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_progress(self, _p: Any) -> None:
        self.stamps.append(self._stamp())

    def intervals(self) -> list[float]:
        """Seconds per step, the first (warm-up) step dropped."""
        points = [self.start, *self.stamps]
        if self.device.type == "cuda":
            _sync(self.device)
            times = [a.elapsed_time(b) / 1e3 for a, b in zip(points, points[1:], strict=False)]
        else:
            times = [b - a for a, b in zip(points, points[1:], strict=False)]
        return times[1:]


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant: ``spec`` = model, image_size, batch, variant, mask_file, steps (and device, default cpu)."""
    from saft_core.checkpoint import checkpoint_metadata, save_delta
    from saft_core.config import TrainConfig
    from saft_core.results import Callbacks
    from saft_core.training import DenseUpdate, SparseUpdate, train

    device = torch.device(spec.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, tokenizer = _build(spec["model"], spec["image_size"], str(device))
    prompts = _prompts(tokenizer, str(device))
    images, labels = _batch(spec["image_size"], spec["batch"], str(device))
    load_mb = _memory_mb(device)
    variant = spec["variant"]
    n_params = sum(p.numel() for p in model.parameters())
    if variant == "full":
        update: Any = DenseUpdate(model)
    elif variant.startswith("saft-"):
        update = SparseUpdate(model, _load_mask(spec["mask_file"], str(device)), variant.removeprefix("saft-"))
    elif variant == "lora":
        from benchmarks.shift import LoraUpdate

        update = LoraUpdate(model, rank=8)
    else:
        update = FloorUpdate(model)
    cfg = TrainConfig(epochs=1, batch_size=spec["batch"], learning_rate=1e-5)
    clock = _StepClock(device)
    train(model, [(images, labels)] * (spec["steps"] + 1), prompts, update, cfg, device=device,
          callbacks=Callbacks(on_progress=clock.on_progress))
    times = clock.intervals()
    peak_mb = _memory_mb(device)
    if spec.get("profile"):
        _profile_step(model, prompts, update, images, labels, cfg, device, spec["profile"])
    trainable = sum(t.numel() for t in update.trainable()) if variant != "floor" else 0
    with tempfile.TemporaryDirectory() as tmp:
        if variant.startswith("saft-"):
            meta = checkpoint_metadata(base_model=spec["model"], pretrained=None, base_sha256="-", ratio=RATIO,
                                       k=trainable, classes=[], templates=TEMPLATES)
            ckpt = save_delta(Path(tmp) / "delta.safetensors", update.deltas(), meta).stat().st_size
        elif variant == "lora":
            from safetensors.torch import save_file

            save_file({f"p{i}": p.detach() for i, p in enumerate(update.params)}, Path(tmp) / "adapter.safetensors")
            ckpt = (Path(tmp) / "adapter.safetensors").stat().st_size
        else:
            ckpt = n_params * 4 if variant == "full" else 0
    engine = getattr(update, "engine", None)
    return {
        "step_times": times, "peak_mb": peak_mb, "load_mb": load_mb, "trainable": trainable,
        "optimizer_bytes": 2 * 4 * trainable, "checkpoint_bytes": ckpt,
        "fallbacks": sorted(engine.fallbacks) if engine else [],
        "paths": dict(sorted(_count(engine.paths.values()).items())) if engine else {},
    }


def _profile_step(model: torch.nn.Module, prompts: Any, update: Any, images: torch.Tensor, labels: torch.Tensor,
                  cfg: Any, device: torch.device, out_file: str) -> None:
    """``torch.profiler`` over one more training step: the ops that take the time, as a table in ``out_file``."""
    from torch.profiler import ProfilerActivity, profile

    from saft_core.training import train

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train(model, [(images, labels)], prompts, update, cfg, device=device)
        _sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    Path(out_file).write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n")


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def prepare_masks(spec: dict[str, Any]) -> dict[str, Any]:
    """SAFT's scored mask and a spread (random-score) mask for ``spec['model']``; selection timed."""
    from saft_core.config import SaftConfig
    from saft_core.masking import select_topk
    from saft_core.scoring import score_parameters

    device = spec.get("device", "cpu")
    model, tokenizer = _build(spec["model"], spec["image_size"], device)
    images, labels = _batch(spec["image_size"], spec["batch"], device)
    scores = score_parameters(model, [(images, labels)], _prompts(tokenizer, device), SaftConfig(),
                              device=torch.device(device))
    del model
    scores = {n: s.cpu() for n, s in scores.items()}
    g = torch.Generator().manual_seed(1)
    masks = {"scored": scores, "spread": {n: torch.rand(s.shape, generator=g) for n, s in scores.items()}}
    out: dict[str, Any] = {"num_scores": sum(s.numel() for s in scores.values()), "tensors": len(scores)}
    for name, sc in masks.items():
        times = []
        for _ in range(3):
            t = time.perf_counter()
            mask = select_topk(sc, RATIO)
            times.append(time.perf_counter() - t)
        path = Path(spec["dir"]) / f"{spec['model']}-{name}.pt"
        torch.save({"indices": mask.indices, "numel": mask.numel, "k": mask.k, "ratio": mask.ratio}, path)
        out[name] = {"file": str(path), "k": mask.k, "tensors_touched": len(mask.indices),
                     "select_s": statistics.median(times)}
    return out


def time_selection(spec: dict[str, Any]) -> dict[str, Any]:
    """``select_topk`` at ratio 0.001 over random scores shaped like ``spec['model']``'s parameters."""
    import open_clip

    from saft_core.masking import select_topk

    device = torch.device(spec.get("device", "cpu"))
    shapes = {n: p.shape for n, p in open_clip.create_model(spec["model"], device="meta").named_parameters()}
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g).to(device) for n, s in shapes.items()}
    times = []
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        select_topk(scores, RATIO)
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"num_scores": sum(s.numel() for s in scores.values()), "select_s": statistics.median(times),
            "select_runs_s": times}


def measure_crossover(spec: dict[str, Any]) -> dict[str, Any]:
    """Entry gradients of one linear layer, gathered products vs row GEMM, over densities k / (rows * in)."""
    from saft_core.sparse_grad import entry_grads, make_plan

    m, n_out, n_in = spec["shape"]
    device = torch.device(spec.get("device", "cpu"))
    # the dtypes of training: bf16 activation gradients under autocast on CUDA, fp32 on the CPU
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(m, n_out, generator=g).to(device, dtype)
    x = torch.randn(m, n_in, generator=g).to(device, dtype)
    rows = []
    for density in spec["densities"]:
        k = max(1, round(density * n_out * n_in))
        idx = torch.randperm(n_out * n_in, generator=g)[:k].sort().values
        # the engine's density: entries per element of the rows that hold them (what the GEMM path computes)
        row = {"fraction": density, "k": k, "density": k / (int((idx // n_in).unique().numel()) * n_in)}
        idx = idx.to(device)
        for dense in (False, True):
            plan = make_plan(idx // n_in, idx % n_in, n_in, device_type=device.type, dense=dense)
            entry_grads(grad, x, plan)  # warm-up (kernels, allocator)
            t = []
            for _ in range(5 if device.type == "cuda" else 3):
                _sync(device)
                t0 = time.perf_counter()
                entry_grads(grad, x, plan)
                _sync(device)
                t.append(time.perf_counter() - t0)
            row["gemm_s" if dense else "gathered_s"] = statistics.median(t)
        rows.append(row)
    crossover = None
    for a, b in zip(rows, rows[1:], strict=False):
        if a["gathered_s"] < a["gemm_s"] and b["gathered_s"] >= b["gemm_s"]:
            # log-linear interpolation of the point where both cost the same
            import math

            ra = math.log(a["gathered_s"] / a["gemm_s"])
            rb = math.log(b["gathered_s"] / b["gemm_s"])
            la, lb = math.log(a["density"]), math.log(b["density"])
            crossover = math.exp(la + (lb - la) * (0 - ra) / (rb - ra))
            break
    return {"shape_m_out_in": [m, n_out, n_in], "dtype": str(dtype).removeprefix("torch."), "rows": rows,
            "crossover_density": crossover}


def run_variants(spec: dict[str, Any]) -> dict[str, Any]:
    """Every run of ``spec['runs']`` ([variant, mask file]) for ``spec['rounds']`` rounds, rotated, in this one
    process (CUDA: a fresh model per run, peak memory reset per run): {"variant|mask": [result per round]}."""
    out: dict[str, list[dict[str, Any]]] = {}
    runs = spec["runs"]
    for r in range(spec["rounds"]):
        for variant, mask, mask_file in runs[r % len(runs):] + runs[:r % len(runs)]:
            log.info("%s %s %s round %d", spec["model"], variant, mask or "", r + 1)
            profile = None
            if spec.get("profile_dir") and r == 0 and variant == "saft-sparse" and mask == "scored":
                profile = str(Path(spec["profile_dir"]) / f"profile-{spec['model']}.txt")
            one = spec | {"variant": variant, "mask_file": mask_file, "profile": profile}
            out.setdefault(f"{variant}|{mask or ''}", []).append(run_variant(one))  # it empties the cache first
    return out


CHILD_TASKS = {"variant": run_variant, "variants": run_variants, "masks": prepare_masks,
               "selection": time_selection, "crossover": measure_crossover}


def _child(task: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run ``task`` in a fresh interpreter (its own memory peak), with ``threads`` torch threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--child", task, json.dumps(spec)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{task} {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- parent
def bench_model(name: str, *, rounds: int, steps: int, threads: int, tmp: str,
                masks_used: tuple[str, ...] = MASKS, quick: bool = False, device: str = "cpu",
                batch: int | None = None, profile_dir: str | None = None, one_process: bool = False,
                ) -> dict[str, Any]:
    image_size, default_batch = SHAPES[torch.device(device).type].get(name, SHAPES["cpu"].get(name, (224, 8)))
    batch = batch or default_batch
    base = {"model": name, "image_size": image_size, "batch": batch, "dir": tmp, "device": device}
    # --quick prepares the masks in this process (one interpreter start less); variants always get their own
    masks = prepare_masks(base) if quick else _child("masks", base, threads)
    runs = [("full", None), ("lora", None), ("floor", None)]
    runs += [(f"saft-{e}", m) for m in masks_used for e in ("dense", "sparse")]
    results: dict[tuple[str, str | None], list[dict]] = {r: [] for r in runs}
    one_process = one_process or torch.device(device).type == "cuda"
    if one_process:
        # one process for every variant: the GPU's memory peak is reset per variant, and a model is built on the
        # GPU in a second, where a process per variant would spend its time starting CUDA
        got = _child("variants", base | {"steps": steps, "rounds": rounds, "profile_dir": profile_dir, "runs": [
            [v, m, masks[m]["file"] if m else None] for v, m in runs]}, threads)
        for (variant, mask) in runs:
            results[(variant, mask)] = got[f"{variant}|{mask or ''}"]
    for r in range(0 if one_process else rounds):
        order = runs[r % len(runs):] + runs[:r % len(runs)]  # rotate: no variant always runs first
        for variant, mask in order:
            spec = base | {"variant": variant, "steps": steps, "mask_file": masks[mask]["file"] if mask else None}
            log.info("%s %s %s round %d", name, variant, mask or "", r + 1)
            results[(variant, mask)].append(_child("variant", spec, threads))

    def summary(variant: str, mask: str | None) -> dict[str, Any]:
        got = results[(variant, mask)]
        times = [t for g in got for t in g["step_times"]]
        return {"step_s": statistics.median(times), "steps_timed": len(times), "peak_mb": max(g["peak_mb"] for g in got),
                "load_mb": max(g["load_mb"] for g in got), "optimizer_bytes": got[0]["optimizer_bytes"],
                "checkpoint_bytes": got[0]["checkpoint_bytes"], "trainable": got[0]["trainable"],
                "fallbacks": got[0]["fallbacks"], "paths": got[0]["paths"]}

    out: dict[str, Any] = {"image_size": image_size, "batch": batch, "classes": CLASSES,
                           "num_params": masks["num_scores"], "masks": {}}
    shared = {v: summary(v, None) for v in ("full", "lora", "floor")}
    for mask in masks_used:
        variants = dict(shared) | {f"saft-{e}": summary(f"saft-{e}", mask) for e in ("dense", "sparse")}
        full = variants["full"]["step_s"]
        for v in variants.values():
            v["ratio_to_full"] = v["step_s"] / full
        out["masks"][mask] = {"k": masks[mask]["k"], "tensors_touched": masks[mask]["tensors_touched"],
                              "tensors": masks["tensors"], "select_s": masks[mask]["select_s"],
                              "variants": {v: variants[v] for v in VARIANTS}}
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    if m.get("device", "cpu") == "cuda":
        intro = [
            f"{m['device_name']} (CUDA {m['cuda']}), torch {m['torch']}; bf16 autocast; random init; ratio {RATIO}; "
            f"{res['rounds']} interleaved rounds of {res['steps']} timed steps after a warm-up, every variant in one "
            "process (a fresh model each); step times from CUDA events; median step.", "",
            "LoRA: r=8 on c_fc and c_proj (the MLP linears) of both towers. Floor: no weight gradient at all. Peak: "
            "`torch.cuda.max_memory_allocated` during the variant (model included). Optimizer: AdamW moments.", "",
        ]
    else:
        intro = [
            f"CPU, {m['threads']} torch threads, {m['cpus']} cores, torch {m['torch']}; random init; ratio {RATIO}; "
            f"{res['rounds']} interleaved rounds of {res['steps']} timed steps after a warm-up, each variant in its "
            f"own process; median step. Load average {m['load_before']} before, {m['load_after']} after: the "
            "machine was shared with other work while this ran, so absolute times are noisy; ratios within one run "
            "are the comparison.", "",
            "LoRA: r=8 on c_fc and c_proj (the MLP linears) of both towers. Floor: no weight gradient at all. Peak: "
            "max RSS of the variant's process (model included). Optimizer: AdamW moments.", "",
        ]
    lines = ["# Training step: SAFT's gradient engines against full fine-tuning, LoRA and the floor", "", *intro]
    for name, mr in res["models"].items():
        for mask, r in mr["masks"].items():
            lines += [f"## {name} ({mr['image_size']} px, batch {mr['batch']}, {mr['num_params']:,} parameters), "
                      f"mask `{mask}`: k={r['k']:,} in {r['tensors_touched']} of {r['tensors']} tensors", "",
                      "| variant | step s | x full | peak MB | optimizer bytes | checkpoint bytes |",
                      "|---|---:|---:|---:|---:|---:|"]
            for v, row in r["variants"].items():
                lines.append(f"| {v} | {row['step_s']:.3f} | {row['ratio_to_full']:.2f} | {row['peak_mb']:,.0f} | "
                             f"{row['optimizer_bytes']:,} | {row['checkpoint_bytes']:,} |")
            vs = r["variants"]
            sp, fl, lo, sd = vs["saft-sparse"], vs["floor"], vs["lora"], vs["saft-dense"]
            lines += ["", f"Targets: sparse step {sp['step_s'] / fl['step_s'] - 1:+.0%} vs the floor (target <= +10 %), "
                      f"{sp['step_s'] / lo['step_s'] - 1:+.0%} vs LoRA (target <= 0), "
                      f"{sp['step_s'] / sd['step_s'] - 1:+.0%} vs SAFT dense (target <= 0); "
                      f"peak {sp['peak_mb'] - lo['peak_mb']:+,.0f} MB "
                      f"vs LoRA (target <= 0). Engine paths: {sp['paths']}; fallbacks: {sp['fallbacks'] or 'none'}.", ""]
    c = res["crossover"]
    lines += ["## Crossover of the engine (gathered products vs row GEMM + gather)", "",
              f"Linear layer, M x out x in = {' x '.join(map(str, c['shape_m_out_in']))}, "
              f"{c.get('dtype', 'float32')}:", "",
              "| k/(out*in) | k | density k/(rows*in) | gathered s | GEMM s |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['fraction']:g} | {r['k']:,} | {r['density']:.2g} | {r['gathered_s']:.4f} | {r['gemm_s']:.4f} |"
              for r in c["rows"]]
    cd = c["crossover_density"]
    lines += ["", f"Measured crossover density: {cd:.3g}." if cd else "No crossover inside the measured range.", "",
              "## Mask selection (`select_topk`, ratio 0.001)", "", "| scores | number | seconds |", "|---|---:|---:|"]
    for name, s in res["selection"].items():
        lines.append(f"| {name} | {s['num_scores']:,} | {s['select_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N): the models, batches and timers of that device")
    ap.add_argument("--quick", action="store_true",
                    help="one model (saft-tiny on the CPU, ViT-B/16 on CUDA), the scored mask, one round: a smoke test")
    ap.add_argument("--models", nargs="+", default=None, help="models to time (default: the device's, see SHAPES)")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every model (default: the device's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="directory for speed.json/.md (speed-cuda.* on CUDA)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per variant and round (default 3 on the CPU, 10 on CUDA; --quick 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--one-process", action="store_true",
                    help="every variant of a model in one process, as on CUDA (a rehearsal of the GPU run on the CPU)")
    ap.add_argument("--profile", action="store_true",
                    help="write a torch.profiler table of one SAFT sparse step per model (always on CUDA)")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        logging.disable(logging.WARNING)  # open_clip's "random init" warnings; the parent reports
        print(json.dumps(CHILD_TASKS[args.child[0]](json.loads(args.child[1]))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)  # for what --quick runs in this process
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    rounds = args.rounds or (1 if args.quick else 2)
    steps = args.steps or (2 if args.quick else 10 if cuda else 3)
    models = args.models or (DEFAULT_MODELS[device.type][:1] if args.quick else DEFAULT_MODELS[device.type])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    res: dict[str, Any] = {"device": device.type, "rounds": rounds, "steps": steps, "ratio": RATIO, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            res["models"][name] = bench_model(name, rounds=rounds, steps=steps, threads=args.threads, tmp=tmp,
                                              masks_used=MASKS[:1] if args.quick else MASKS,
                                              quick=args.quick and not cuda, device=str(device), batch=args.batch,
                                              profile_dir=str(out) if cuda or args.profile else None,
                                              one_process=args.one_process)
    # batch x tokens, ViT-B/16's c_fc: the CPU benchmark's batch 8, CUDA's 128
    shape = [8 * 65, 512, 128] if args.quick and not cuda else [(128 if cuda else 8) * 197, 3072, 768]
    densities = [1e-3, 1e-1] if args.quick else [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    crossover_spec = {"shape": shape, "densities": densities, "device": str(device)}
    res["crossover"] = (measure_crossover(crossover_spec) if args.quick and not cuda
                        else _child("crossover", crossover_spec, args.threads))
    sel_models = () if args.quick else SELECTION_MODELS
    res["selection"] = {m: _child("selection", {"model": m, "device": str(device)}, args.threads)
                        for m in sel_models}
    for name, mr in res["models"].items():
        res["selection"].setdefault(f"{name} (scored)", {"num_scores": mr["num_params"],
                                                         "select_s": mr["masks"]["scored"]["select_s"]})
    res["machine"] = {"device": device.type, "cpus": os.cpu_count(), "threads": args.threads,
                      "torch": torch.__version__, "python": platform.python_version(),
                      "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                      "shared": not cuda}
    if cuda:
        res["machine"] |= {"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                           "memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
    stem = "speed-cuda" if cuda else "speed"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    table = markdown(res)
    (out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
