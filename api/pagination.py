"""Keyset (cursor) pagination over rows ordered newest first by ``(created_at, id)``."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from saft_service.input_checks import ID_PATTERN

from .problems import ProblemError

_ID = re.compile(ID_PATTERN)



class _Listed(Protocol):
    """A table listed newest first: its rows have a creation time and a string id (the mapped class's columns)."""

    created_at: ClassVar[InstrumentedAttribute[datetime]]
    id: ClassVar[InstrumentedAttribute[str]]


Row = TypeVar("Row", bound=_Listed)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise ProblemError(422, "invalid_cursor", "cursor is not one this API returned") from e
    # Only what encode_cursor makes: an aware time the database can compare, an id of id characters.
    if at.utcoffset() is None or not _ID.fullmatch(row_id):
        raise ProblemError(422, "invalid_cursor", "cursor is not one this API returned")
    try:
        at = at.astimezone(UTC)
    except OverflowError as e:  # an offset that moves the time out of datetime's range
        raise ProblemError(422, "invalid_cursor", "cursor is not one this API returned") from e
    return at, row_id


def newest_first_page(
    session: Session, stmt: Select[Any], model: type[Row], *, limit: int, cursor: str | None
) -> tuple[list[Row], str | None]:
    """One page of ``stmt`` (rows of ``model``) after ``cursor``, and the cursor of the next page (None: last)."""
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where((model.created_at < at) | ((model.created_at == at) & (model.id < last_id)))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
