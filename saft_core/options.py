"""Options declared once: a config dataclass field with its default, bounds and help text.

Every option of a run is a field of one of the core's config dataclasses (``config.py``), declared with
``option(...)``. The field carries what every surface needs, so the CLI's flags (``flags.py``), the service's
job spec and the dataclass's own ``__post_init__`` read one declaration and cannot disagree:

- ``help``: the text shown by ``--help`` and in the OpenAPI document;
- bounds ``ge``/``gt``/``le``/``lt`` on numbers (checked by ``check_bounds``, argparse and pydantic alike);
- choices: the field's ``Literal`` type (``options(cls)`` resolves it);
- ``flag``: the CLI flag where it is not ``--field-name`` (e.g. ``--lr``).
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

BOUND_KEYS = ("ge", "gt", "le", "lt")


def option(
    help: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field carrying its help text, numeric bounds and CLI flag in ``metadata``."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata: dict[str, Any] = {"help": help, "bounds": bounds}
    if flag is not None:
        metadata["flag"] = flag
    return field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One field of a config dataclass as the surfaces see it. ``type`` is the resolved annotation; ``base``
    is it without ``None`` (the type a flag parses); ``choices`` come from a ``Literal``."""

    name: str
    type: Any
    base: Any
    optional: bool
    default: Any
    default_factory: Any
    help: str
    bounds: dict[str, float]
    choices: tuple[Any, ...] | None
    flag: str

    @property
    def dest(self) -> str:
        """The attribute an argparse namespace holds the flag's value in: the flag's name ('--lr' -> 'lr')."""
        return self.flag.lstrip("-").replace("-", "_")


def _without_none(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(tp))
    return tp, False


def options(cls: type) -> list[Option]:
    """The options of dataclass ``cls``, in declaration order (fields declared without ``option`` included,
    with an empty help text)."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        base, optional = _without_none(hints[f.name])
        choices = get_args(base) if get_origin(base) is Literal else None
        out.append(
            Option(
                name=f.name, type=hints[f.name], base=base, optional=optional, default=f.default,
                default_factory=f.default_factory, help=f.metadata.get("help", ""),
                bounds=dict(f.metadata.get("bounds", {})), choices=choices,
                flag=f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            )
        )
    return out


def option_of(cls: type, name: str) -> Option:
    """The option ``name`` of dataclass ``cls``."""
    for o in options(cls):
        if o.name == name:
            return o
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _num(v: float) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def describe_bounds(bounds: dict[str, float]) -> str:
    """``bounds`` in words: '>= 1', 'in (0, 1)', 'in [0, 1)', '<= 10'."""
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return "any value"


def bound_error(value: float, bounds: dict[str, float]) -> str | None:
    """Why ``value`` is outside ``bounds`` ('must be >= 1, got 0'), or None when it is inside. NaN is outside
    any bound."""
    inside = (
        ("ge" not in bounds or value >= bounds["ge"])
        and ("gt" not in bounds or value > bounds["gt"])
        and ("le" not in bounds or value <= bounds["le"])
        and ("lt" not in bounds or value < bounds["lt"])
        and value == value  # NaN
    )
    return None if inside else f"must be {describe_bounds(bounds)}, got {value}"


def check_bounds(config: Any) -> None:
    """Raise ``ConfigError`` for the first field of ``config`` outside its bounds or its ``Literal`` choices
    (``None`` is accepted where the field is optional)."""
    for o in options(type(config)):
        value = getattr(config, o.name)
        if value is None and o.optional:
            continue
        if o.choices is not None and value not in o.choices:
            raise ConfigError(f"unknown {o.name} {value!r}; use {', '.join(map(str, o.choices))}")
        if o.bounds and (why := bound_error(value, o.bounds)):
            raise ConfigError(f"{o.name} {why}")
