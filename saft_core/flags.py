"""CLI flags from the config dataclasses' options: the flag, its type, choices, default, bounds and help text
come from the field (``options.py``), so a new option of a config is a new flag with no edit here.

A flag's ``dest`` is its own name (``--lr`` -> ``lr``); ``config_values(args, cls)`` hands the parsed values
back to the dataclass under the fields' names. Bounds are checked while parsing (argparse then exits 2 with usage and the flag's name), with the
same words ``__post_init__`` uses.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING
from typing import Any

from .options import Option, bound_error, options


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


def finite_float(text: str) -> float:
    """argparse ``type`` of a float flag written by hand: a finite number (NaN and infinity are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


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
