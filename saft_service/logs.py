"""Logging setup shared by the API, the worker and the CLI (stderr, one line per record)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level``; reuses a handler someone already installed (no duplicate lines)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
    root.setLevel(level.upper())
