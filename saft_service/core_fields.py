"""Pydantic fields from the core's options: the type, default, bounds and help text of a job-spec field are
the config dataclass field's (``saft_core.options``), so the API, the CLI and the core cannot disagree and a
new option of the core is a new job-spec field with no edit here.
"""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any, cast

from pydantic import Field
from pydantic.fields import FieldInfo

from saft_core.options import Option, option_of, options


def field_of(o: Option, *, note: str = "", **constraints: Any) -> FieldInfo:
    """A pydantic ``Field`` with ``o``'s default, bounds and help; ``note`` is appended to the help and
    ``constraints`` (e.g. ``max_length``) are the service's own limits on top of the core's."""
    kwargs = {"description": f"{o.help} {note}".strip(), **o.bounds, **constraints}
    # ``Field`` is typed to return its default's type (so that it sits after an annotation); it is a FieldInfo.
    if o.default_factory is not MISSING:
        info = Field(default_factory=o.default_factory, **kwargs)
    elif o.default is MISSING:
        info = Field(**kwargs)
    else:
        info = Field(o.default, **kwargs)
    return cast(FieldInfo, info)


def core_field(cls: type, name: str, *, note: str = "", **constraints: Any) -> Any:
    """``field_of`` the option ``name`` of config dataclass ``cls`` (typed ``Any`` to sit after an annotation)."""
    return field_of(option_of(cls, name), note=note, **constraints)


def core_fields(cls: type) -> dict[str, tuple[Any, FieldInfo]]:
    """Every option of ``cls`` as ``create_model`` field definitions ``name: (type, Field)``, in declaration
    order and under the field's own name: a job-spec section is the config dataclass."""
    return {o.name: (o.type, field_of(o)) for o in options(cls)}
