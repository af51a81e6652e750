"""The core's commands of ``saft``: finetune, classify, evaluate, apply.

``register(sub)`` adds them to a ``saft`` parser (the ``saft_cli`` package composes them with the service's);
``main()`` runs them alone, without the service installed. The fine-tuning flags come from the config
dataclasses (``flags.py``). Human output goes to stdout, progress bars to stderr; ``--json`` prints one JSON
object as the last line. Errors a user can fix exit with status 2 and a one-line message; a cancelled run
exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATES,
    METHODS,
    DataConfig,
    FinetuneConfig,
    ModelSpec,
    TrainConfig,
)
from .errors import Cancelled, SaftError
from .flags import add_model_options, add_option, add_training_options, alpha_arg, method_values, train_values
from .frontier import DEFAULT_ALPHA, RECOMMENDED, RULE, resolve_alpha
from .options import option_of

if TYPE_CHECKING:
    from .health import TrainingWarning

log = logging.getLogger("saft")


class Subcommands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as a layer that adds its commands needs it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


# ---------------------------------------------------------------------------------------------- helpers
class _Bars:
    """tqdm progress bars, one per stage, on stderr; ``--quiet`` turns them off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def stage(self, name: str) -> None:
        self.close()
        if self.enabled:
            print(f"[{name}]", file=sys.stderr, flush=True)

    def progress(self, p: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.desc != p.stage:
            self.close()
            self.bar = tqdm(total=p.total, desc=p.stage, file=sys.stderr, leave=True, dynamic_ncols=True)
        self.bar.total = p.total
        self.bar.n = p.step
        if p.loss is not None:
            self.bar.set_postfix(loss=f"{p.loss:.4f}", **({"lr": f"{p.lr:.2e}"} if p.lr is not None else {}))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _model_args(p: argparse.ArgumentParser, *, default_model: str | None = DEFAULT_MODEL) -> None:
    add_model_options(p, default_model=default_model)
    add_option(p, option_of(ModelSpec, "init_seed"))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")


def _base_spec(args: argparse.Namespace, delta: Any) -> ModelSpec:
    """--model/--pretrained when given, else the base recorded in the checkpoint, else the default model."""
    if args.model:
        return ModelSpec(args.model, args.pretrained, args.init_seed)
    if delta is not None:
        return delta.base_spec()
    return ModelSpec(DEFAULT_MODEL, args.pretrained, args.init_seed)


def _templates(values: list[str] | None) -> tuple[str, ...]:
    return tuple(values) if values else DEFAULT_TEMPLATES


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------- finetune
def _eval_sets(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v.rstrip("/")).name, v
        if name in out:
            raise SaftError(f"two eval sets are named {name!r}; name them with NAME=DIR", code="invalid_config")
        out[name] = path
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    from .pipeline import finetune
    from .results import Callbacks

    cfg = FinetuneConfig(
        model=ModelSpec(args.model, args.pretrained, init_seed=args.init_seed),
        data=DataConfig(
            train=args.train, eval=_eval_sets(args.eval), shots=args.shots,
            validation_fraction=args.validation_fraction, templates=_templates(args.template),
            workers=args.workers,
        ),
        train=TrainConfig(**train_values(args)),
        method=METHODS[args.method](**method_values(args)),
        device=args.device,
        precision=args.precision,
        evaluate_zero_shot=not args.no_zero_shot,
    )
    out = Path(args.out)
    mask_out = Path(args.mask_out) if args.mask_out else out.with_name(out.name.removesuffix(".safetensors") + ".mask.safetensors")
    bars = _Bars(not args.quiet)
    cb = Callbacks(on_stage=bars.stage, on_progress=bars.progress,
                   on_message=lambda level, text: log.log(logging.WARNING if level == "warning" else logging.INFO, text))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".saft-") as tmp:
        try:
            result = finetune(cfg, tmp, cb)
        finally:
            bars.close()
        if result.mask_path is not None:
            os.replace(result.mask_path, mask_out)
        os.replace(result.checkpoint_path, out)
    summary = {
        "checkpoint": str(out),
        "mask": str(mask_out) if result.mask_path is not None else None,
        "method": args.method,
        "classes": result.classes,
        "base_sha256": result.base_sha256,
        "k": result.mask.k if result.mask else None,
        "evaluations": [asdict(e) for e in result.evaluations],
        "recommended_alpha": result.recommended_alpha,
        "alpha_rule": RULE if result.recommended_alpha is not None else None,
        "metrics": result.metrics,
        "timings": {f"{s}_s": result.metrics.get(f"seconds_{s}", 0.0)
                    for s in ("scoring", "masking", "training", "evaluating")},
        "steps": int(result.metrics["train_steps"]),
        "peak_memory_mb": result.metrics["peak_memory_mb"],
        "warnings": [w.to_dict() for w in result.warnings],
    }
    print_warnings(result.warnings)
    if args.json:
        _emit_json(summary)
    else:
        m = result.metrics
        print(f"wrote {out} ({int(m['checkpoint_bytes']):,} bytes; the fp32 model is "
              f"{int(m['model_bytes_fp32']):,} bytes, {m['compression']:.0f}x larger)")
        if result.mask:
            print(f"selected k={result.mask.k:,} of {result.mask.num_eligible:,} entries "
                  f"in {sum(t.selected > 0 for t in result.mask.tensors)} tensors; mask: {mask_out}")
        print(f"training loss {m['train_loss_first']:.4f} -> {m['train_loss_last']:.4f} over {int(m['train_steps'])} steps")
        points = [(e.dataset, e.alpha, e.top1, e.n) for e in result.evaluations]
        if points:  # no validation split and no eval set: nothing was scored
            print(frontier_table(points, result.recommended_alpha, RULE))
    return 0


def print_warnings(warnings: list[TrainingWarning]) -> None:
    """Training-health warnings (``health.TrainingWarning``) on stderr, each with what to try. The run still
    succeeded: the checkpoint is written and the exit status is 0."""
    for w in warnings:
        print(f"warning [{w.code}]: {w.message}\n  hint: {w.hint}", file=sys.stderr)


def frontier_table(points: list[tuple[str, float, float, int]], recommended: float | None, rule: str | None) -> str:
    """Top-1 of (dataset, alpha, top-1, n) ``points`` as a table: a row per dataset, a column per alpha (0 is
    zero-shot, 1 fine-tuned), the recommended alpha starred and explained below."""
    alphas = sorted({alpha for _, alpha, _, _ in points})
    top1 = {(name, alpha): acc for name, alpha, acc, _ in points}
    sizes = {name: n for name, _, _, n in points}
    width = max([len("top-1 at alpha"), *(len(name) for name in sizes)]) + 1
    head = "".join(f"{f'{a:g}' + ('*' if a == recommended else ''):>8}" for a in alphas)
    lines = [f"{'top-1 at alpha':<{width}}{head}"]
    for name, n in sizes.items():
        cells = "".join(f"{top1[(name, a)]:>8.1%}" if (name, a) in top1 else f"{'':>8}" for a in alphas)
        lines.append(f"{name:<{width}}{cells}  (n={n})")
    if recommended is not None:
        lines.append(f"* recommended alpha {recommended:g} ({rule} rule on the validation split; "
                     f"use it with --alpha {RECOMMENDED})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- classify
def cmd_classify(args: argparse.Namespace) -> int:
    from .images import ImageDecodeError, decode_image
    from .inference import Classifier

    spec = ModelSpec(args.model, args.pretrained, args.init_seed) if (args.model or not args.checkpoint) else None
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    images = []
    for path in args.images:
        try:
            images.append(decode_image(path))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"cannot read image {path}: {e.message}", code=e.code) from e
    clf = Classifier.load(spec, args.checkpoint, alpha=args.alpha, device=args.device)
    results = clf.classify(images, labels, top_k=args.top_k, templates=args.template)
    rows: list[dict[str, Any]] = [{"image": str(p), "predictions": [{"label": lab, "score": s} for lab, s in r]}
            for p, r in zip(args.images, results, strict=True)]
    if args.json:
        _emit_json({"alpha": clf.alpha if clf.delta is not None else None, "results": rows})
    else:
        if args.alpha == RECOMMENDED and clf.delta is not None:
            print(f"at the checkpoint's recommended alpha {clf.alpha:g}", file=sys.stderr)
        for row in rows:
            preds = ", ".join(f"{p['label']} {p['score']:.3f}" for p in row["predictions"])
            print(f"{row['image']}: {preds}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import apply_delta, load_delta
    from .data import resolve_workers
    from .datasets import load_dataset
    from .evaluation import evaluate_dataset
    from .models import load_model
    from .results import variant_at

    delta = load_delta(args.checkpoint) if args.checkpoint else None
    loaded = load_model(_base_spec(args, delta), args.device)
    alpha = resolve_alpha(args.alpha, delta.recommended_alpha) if delta is not None else 0.0
    if delta is not None:
        apply_delta(loaded.model, delta, alpha=alpha, base_sha256=loaded.sha256)
    templates = args.template or (delta.templates if delta and delta.templates else list(DEFAULT_TEMPLATES))
    dataset = load_dataset(args.data)
    bars = _Bars(not args.quiet)
    from .results import Callbacks

    try:
        score = evaluate_dataset(
            loaded, dataset, name=Path(args.data).name, variant=variant_at(alpha), alpha=alpha,
            templates=templates, batch_size=args.batch_size, callbacks=Callbacks(on_progress=bars.progress),
            workers=resolve_workers(args.workers, loaded.device),
        )
    finally:
        bars.close()
    if args.json:
        _emit_json(asdict(score))
    else:
        print(f"{score.dataset}: top1 {score.top1:.1%}  top5 {score.top5:.1%}  (n={score.n}, {score.num_classes} classes)")
    return 0


# ---------------------------------------------------------------------------------------------- apply
def cmd_apply(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import apply_delta, load_delta, save_weights
    from .models import load_model

    delta = load_delta(args.checkpoint)
    spec = _base_spec(args, delta)
    loaded = load_model(spec, "cpu")
    alpha = resolve_alpha(args.alpha, delta.recommended_alpha)
    apply_delta(loaded.model, delta, alpha=alpha, base_sha256=loaded.sha256)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in loaded.model.state_dict().items()}
    meta = {"format": "open_clip-state-dict", "base_model": spec.name, "source_checkpoint": Path(args.checkpoint).name,
            "alpha": repr(alpha), "classes": delta.metadata.get("classes", "[]")}
    save_weights(args.out, state, meta)
    print(f"wrote {args.out}: {spec.name} with the delta applied at alpha={alpha:g} "
          f"(load it with --model {spec.name} --pretrained {args.out})")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def new_parser() -> tuple[argparse.ArgumentParser, Subcommands]:
    """The bare ``saft`` parser (``-v``) and the sub-command set each layer adds its commands to."""
    parser = argparse.ArgumentParser(prog="saft", description="Robust fine-tuning of CLIP models with SAFT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def register(sub: Subcommands) -> None:
    """Add the core's commands (finetune, classify, evaluate, apply) to ``sub``."""
    p = sub.add_parser("finetune", help="fine-tune a CLIP model with SAFT (or fully) and write a delta checkpoint")
    _model_args(p)
    p.add_argument("--train", required=True, help="ImageFolder directory or CSV manifest (path,label)")
    p.add_argument("--eval", action="append", default=[], metavar="[NAME=]DIR", help="evaluation set (repeatable)")
    p.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--mask-out", help="mask file (default: OUT with .mask.safetensors)")
    add_training_options(p)
    add_option(p, option_of(DataConfig, "workers"))
    add_option(p, option_of(FinetuneConfig, "precision"))
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot baseline evaluation")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("classify", help="classify images zero-shot or with a checkpoint")
    _model_args(p, default_model=None)
    p.add_argument("--checkpoint", help="delta checkpoint; its base model and classes are the defaults")
    p.add_argument("--alpha", type=alpha_arg, default=DEFAULT_ALPHA,
                   help=f"0 = base, 1 = fine-tuned, between = interpolation, '{RECOMMENDED}' = the checkpoint's "
                        f"recommended alpha (1 when it has none); default {DEFAULT_ALPHA}")
    p.add_argument("--labels", help="comma-separated labels (default: the checkpoint's classes)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--template", action="append")
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy on a labelled folder")
    _model_args(p, default_model=None)
    p.add_argument("--checkpoint")
    p.add_argument("--alpha", type=alpha_arg, default=1.0,
                   help=f"0 = base, 1 = fine-tuned (default), between = interpolation, '{RECOMMENDED}' = the "
                        "checkpoint's recommended alpha")
    p.add_argument("--data", required=True, help="ImageFolder directory or CSV manifest")
    p.add_argument("--batch-size", type=int, default=64)
    add_option(p, option_of(DataConfig, "workers"))
    p.add_argument("--template", action="append")
    p.add_argument("--json", action="store_true", help="print one JSON object (with top1) as the last line")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("apply", help="merge a delta checkpoint into its base weights (one safetensors file)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=alpha_arg, default=DEFAULT_ALPHA,
                   help=f"as for classify (default {DEFAULT_ALPHA})")
    p.add_argument("--model", default=None, help="override the base model of the checkpoint")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help="with --model: its base weights")
    p.add_argument("--init-seed", type=int, default=0)
    p.set_defaults(func=cmd_apply)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command; map errors to exit codes."""
    try:
        try:
            return _run(parser, argv)
        finally:
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # The reader went away (`saft jobs list | head`): stop quietly, as `cat` does on SIGPIPE. Point stdout
        # at /dev/null so that the interpreter's own flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except SaftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """The core's commands alone (``python -m saft_core.cli``); the ``saft`` command adds the service's."""
    parser, sub = new_parser()
    register(sub)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
