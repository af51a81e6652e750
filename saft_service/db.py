"""Engine and sessions. One engine per process (a forked worker child makes its own), migrations on demand."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings, get_settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
_engines: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout.

    The pool is bounded (``SAFT_DB_POOL_SIZE`` + ``SAFT_DB_MAX_OVERFLOW`` connections per process) and a caller
    waits at most ``SAFT_DB_POOL_TIMEOUT`` seconds for a connection, then gets ``sqlalchemy.exc.TimeoutError``
    (the API answers 503 database_busy), so a burst queues briefly and then fails loudly instead of piling up.
    """
    settings = settings or get_settings()
    pool = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
    }
    if url.startswith("sqlite"):
        if ":memory:" in url or url.rstrip("/") == "sqlite:":
            pool = {}  # an in-memory database lives in one connection; its pool takes no sizes
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def get_engine(settings: Settings | None = None) -> Engine:
    """This process's engine for the configured database (created on first use, again after a fork)."""
    settings = settings or get_settings()
    url = settings.sqlalchemy_url
    key = (os.getpid(), url)
    if key not in _engines:
        if settings.embedded_database:
            settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        _engines[key] = make_engine(url, settings)
    return _engines[key]


def affected_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE in ``session`` and return how many rows it changed (a compare-and-set's answer).

    The session types its results as ``Result``, which has no ``rowcount``; a DML statement's result is a
    ``CursorResult``, which does.
    """
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(settings: Settings | None = None) -> None:
    """Raise if the database cannot be reached."""
    with get_engine(settings).connect() as conn:
        conn.execute(text("SELECT 1"))


def alembic_config(settings: Settings | None = None) -> Any:
    """The Alembic config of this project, pointed at the configured database."""
    from alembic.config import Config

    settings = settings or get_settings()
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["configure_logger"] = False  # keep the caller's logging
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


def upgrade(settings: Settings | None = None, *, quiet: bool = False) -> None:
    """Bring the database to the newest migration (``alembic upgrade head``). ``quiet``: without Alembic's
    INFO lines (for commands that migrate only as a matter of course: ``saft keys``, ``saft serve``); its
    plugin set-up lines are never shown."""
    settings = settings or get_settings()
    if settings.embedded_database:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    quieted = [logging.getLogger("alembic.runtime.plugins")] + ([logging.getLogger("alembic")] if quiet else [])
    levels = [lg.level for lg in quieted]
    for lg in quieted:
        lg.setLevel(max(logging.WARNING, lg.getEffectiveLevel()))
    try:
        from alembic import command  # importing it sets up its plugins (and logs that)

        command.upgrade(alembic_config(settings), "head")
    finally:
        for lg, level in zip(quieted, levels, strict=True):
            lg.setLevel(level)
