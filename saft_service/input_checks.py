"""Checks that bound the work one request can cause; the limits themselves are ``Settings`` fields.

Every refusal is a ``LimitError`` whose ``code`` names the limit (``json_too_deep``, ``label_too_long``, ...);
the API answers it as a problem document with ``status`` (413 when the request is too big, 422 when a value is
outside its range). Used by the API (requests, uploads, classify) and by the job spec (metadata).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

# Largest value of the database's integer ids and counters (signed 64 bit).
MAX_INT64 = 2**63 - 1
# Characters an id may hold (``tables.new_id`` makes ``prefix_hex``); keeps NULs and the like out of queries.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
# A one-line text for people: no ASCII control characters (NUL, newlines...).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"

# The codes a refusal can carry, so a validation error raised for one of them keeps it as its problem code.
LIMIT_CODES = frozenset(
    {
        "json_too_deep",
        "non_finite_number",
        "nul_character",
        "control_characters",
        "metadata_too_large",
        "too_many_templates",
        "template_too_long",
        "too_many_labels",
        "too_many_prompts",
        "model_too_large",
        "label_too_long",
        "class_name_too_long",
        "too_many_classes",
        "classes_file_too_large",
        "too_many_images",
        "image_too_large",
        "unknown_model",
        "model_not_allowed",
    }
)
# A string, or an unterminated one up to the end: every match succeeds from where it starts, so the scan is
# linear (a pattern that must end at a closing quote backtracks to the end from every quote: quadratic).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*"?', re.DOTALL)
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class Refused(Exception):
    """A request the service layer refuses: ``status`` is the HTTP status to answer, ``code`` the stable problem
    code, ``extra`` more members of the problem document. The API answers each one the same way (a handler in
    ``api/problems.py``), so a route lets it pass."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class LimitError(ValueError):
    """A request goes over a limit. ``code`` names the limit; ``status`` is the HTTP status to answer."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def json_depth_exceeds(raw: bytes | str, max_depth: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``max_depth``, found without parsing it.

    Strings are dropped, then innermost ``[]``/``{}`` pairs are removed one level per pass (a C-speed regex
    substitution), so the cost is ``O(len(raw) * max_depth)`` and independent of how deep the text goes.
    Malformed bracketing is left to the JSON parser.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        reduced = _INNERMOST.sub(b"", brackets)  # one level: pairs that are innermost now, not those they uncover
        if reduced == brackets:
            return False
        brackets = reduced
    return _INNERMOST.search(brackets) is not None


def loads_bounded(raw: bytes | str, *, max_depth: int, what: str) -> Any:
    """``json.loads`` after checking the nesting depth; NaN and Infinity are not JSON and are refused.

    Raises ``LimitError`` (json_too_deep) or ``json.JSONDecodeError`` / ``ValueError`` for malformed text.
    """
    if json_depth_exceeds(raw, max_depth):
        raise LimitError("json_too_deep", f"{what} nests deeper than {max_depth} levels")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    return json.loads(raw, parse_constant=no_constant)


def check_json_value(value: Any, *, max_depth: int, what: str) -> None:
    """Refuse what JSON (and Postgres' JSONB) cannot store: NaN/Infinity, NUL characters; and deep nesting.

    Walks ``value`` without recursion, so any depth is safe to check.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise LimitError("json_too_deep", f"{what} nests deeper than {max_depth} levels")
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                if isinstance(key, str) and "\x00" in key:
                    raise LimitError("nul_character", f"{what} holds a NUL character")
                stack.append((child, depth + 1))
        elif isinstance(item, float) and not math.isfinite(item):
            raise LimitError("non_finite_number", f"{what} holds {item}, which is not a JSON number")
        elif isinstance(item, str) and "\x00" in item:
            raise LimitError("nul_character", f"{what} holds a NUL character")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control, format or unassigned character (NUL, newlines, bidi overrides...)."""
    return any(unicodedata.category(ch)[0] == "C" for ch in text)


def check_name(text: str, *, max_chars: int, what: str, code: str) -> None:
    """A name shown to people and put in prompts: at most ``max_chars``, no control characters."""
    if len(text) > max_chars:
        raise LimitError(code, f"{what} is {len(text)} characters long; the limit is {max_chars}")
    if has_control_characters(text):
        raise LimitError("control_characters", f"{what} holds control characters")
