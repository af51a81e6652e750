"""CLI flags from the config dataclasses' options: the flag, its type, choices, default, bounds and help text
come from the field (``options.py``), so a new option of a config is a new flag with no edit here.

A flag's ``dest`` is its own name (``--lr`` -> ``lr``); ``config_values(args, cls)`` hands the parsed values
back to the dataclass under the fields' names. Bounds are checked while parsing (argparse then exits 2 with
usage and the flag's name), with the same words ``__post_init__`` uses.

The options of a fine-tuning run (``add_model_options``, ``add_training_options``) and their values
(``method_values``, ``train_values``) are shared by ``saft finetune``, which runs them, and ``saft jobs create``,
which sends them to a service: the two read the same flags with the same meaning.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING, replace
from typing import Any

from .config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    METHODS,
    DataConfig,
    FinetuneConfig,
    ModelSpec,
    SaftConfig,
    TrainConfig,
)
from .errors import ConfigError
from .frontier import AlphaChoice, parse_alpha
from .options import Option, bound_error, option_of, options


def _parser(o: Option, check_bounds: bool) -> Callable[[str], Any]:
    """The argparse ``type`` of option ``o``: convert, then check the bounds (unless ``check_bounds`` is off)."""

    def parse(text: str) -> Any:
        try:
            value = o.base(text)
        except ValueError:
            kind = "a whole number" if o.base is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not math.isfinite(value):  # no option means NaN or infinity (nor can JSON carry them to a service)
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if check_bounds and o.bounds and (why := bound_error(value, o.bounds)):
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = o.base.__name__  # argparse names the type in "invalid <type> value" messages
    return parse


def _help(o: Option, default: Any) -> str:
    text = o.help.rstrip(".").replace("%", "%%")  # argparse formats help with %
    if default in (None, False) or "default" in text:  # None and False say nothing; some texts name it
        return text
    return f"{text} (default {default})"


def add_option(parser: argparse.ArgumentParser, o: Option, *, check_bounds: bool = True) -> None:
    """Add option ``o`` as a flag. A bool that defaults to False is a switch; a Literal is a choice; a number
    is parsed and bounds-checked. ``check_bounds=False`` leaves the bounds to whoever receives the value (the
    service, for the remote commands: its ranges are those of the core it runs, not of this one)."""
    default = None if o.default is MISSING else o.default
    flag = o.flag
    if o.base is bool:
        if default:
            raise ValueError(f"{o.name}: a flag for a bool that defaults to True needs its own wording")
        parser.add_argument(flag, dest=o.dest, action="store_true", help=_help(o, default))
    elif o.choices is not None:
        parser.add_argument(flag, dest=o.dest, choices=list(o.choices), default=default, help=_help(o, default))
    elif o.base in (int, float):
        parser.add_argument(flag, dest=o.dest, type=_parser(o, check_bounds), default=default, help=_help(o, default))
    elif o.base is str:
        parser.add_argument(flag, dest=o.dest, default=default, help=_help(o, default))
    else:
        raise TypeError(f"{o.name}: no flag for a field of type {o.type}; add it by hand")


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = (), check_bounds: bool = True
) -> None:
    """Add every option of dataclass ``cls`` except those in ``skip`` (added by hand: special meanings)."""
    for o in options(cls):
        if o.name not in skip:
            add_option(parser, o, check_bounds=check_bounds)


def config_values(args: argparse.Namespace, cls: type, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s options (added by ``add_options``), as keyword arguments of ``cls``."""
    return {o.name: getattr(args, o.dest) for o in options(cls) if o.name not in skip}


def alpha_arg(text: str) -> AlphaChoice:
    """argparse type of ``--alpha``: a number in [0, 1] or ``recommended``."""
    try:
        return parse_alpha(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------------------------- a run's options
# Flags whose value means something other than the field's: --method picks the method's config (its ``type``);
# a grad clip of 0 disables it (the config says None); the scoring batch defaults to the training batch.
_METHOD_BY_HAND = ("type", "scoring_batch_size")
_TRAIN_BY_HAND = ("grad_clip",)


def add_model_options(p: argparse.ArgumentParser, *, default_model: str | None = DEFAULT_MODEL) -> None:
    """--model and --pretrained: the base model (shared by the local commands and ``saft jobs create``)."""
    p.add_argument("--model", default=default_model, help=f"open_clip architecture or hf-hub:NAME (default {default_model})")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED, help=option_of(ModelSpec, "pretrained").help)


def add_training_options(p: argparse.ArgumentParser, *, check_bounds: bool = True) -> None:
    """The method and its options, the training loop's and the data split's, from the config dataclasses:
    ``saft finetune`` runs them locally and checks their bounds while parsing; ``saft jobs create`` sends them
    to the service, which judges them (``check_bounds=False``)."""
    check = {"check_bounds": check_bounds}
    method = option_of(FinetuneConfig, "method")
    default = method.default_factory().type
    p.add_argument("--method", choices=list(METHODS), default=default, help=_help(method, default))
    added = set(_METHOD_BY_HAND)
    for cls in METHODS.values():  # a field two methods share is one flag
        add_options(p, cls, skip=added, **check)
        added |= {o.name for o in options(cls)}
    score_batch = option_of(SaftConfig, "scoring_batch_size")
    add_option(p, replace(score_batch, default=None, help=f"{score_batch.help} Default: --batch-size."), **check)
    add_options(p, TrainConfig, skip=_TRAIN_BY_HAND, **check)
    grad_clip = option_of(TrainConfig, "grad_clip")
    p.add_argument("--grad-clip", type=_parser(grad_clip, check_bounds=False), default=grad_clip.default,
                   help=f"{grad_clip.help.split(';')[0]}; 0 disables (default {grad_clip.default})")
    add_option(p, option_of(DataConfig, "shots"), **check)
    add_option(p, option_of(DataConfig, "validation_fraction"), **check)
    p.add_argument("--template", action="append", help=option_of(DataConfig, "templates").help + " Repeatable.")


def method_values(args: argparse.Namespace) -> dict[str, Any]:
    """The method chosen by ``--method`` and its options, as keyword arguments of its config (``type``
    included: the same dict is a job spec's ``method``)."""
    cls = METHODS[args.method]
    values: dict[str, Any] = {"type": args.method, **config_values(args, cls, skip=_METHOD_BY_HAND)}
    if cls is SaftConfig:
        values["scoring_batch_size"] = args.score_batch_size or args.batch_size
    return values


def train_values(args: argparse.Namespace) -> dict[str, Any]:
    """The training loop's options as keyword arguments of ``TrainConfig``."""
    return {**config_values(args, TrainConfig, skip=_TRAIN_BY_HAND),
            "grad_clip": args.grad_clip if args.grad_clip > 0 else None}
