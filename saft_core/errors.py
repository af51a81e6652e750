"""Errors the core raises on bad input or a failed step.

Every error carries a stable ``code`` (snake case) that callers (the CLI, the worker, the API) can map to an
exit status or an HTTP problem without parsing messages. Messages say what is wrong and what to do.
"""

from __future__ import annotations


class SaftError(Exception):
    """Base class: a problem a user can act on."""

    code = "saft_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(SaftError, ValueError):
    """A configuration value is out of range or inconsistent."""

    code = "invalid_config"


class DataError(SaftError, ValueError):
    """A dataset is empty, has too few classes, or holds unreadable files."""

    code = "invalid_dataset"


class ModelError(SaftError):
    """A model name is unknown or its weights cannot be found or loaded."""

    code = "model_unavailable"


class CheckpointError(SaftError):
    """A checkpoint file is malformed or does not belong to the given base model."""

    code = "invalid_checkpoint"


class Cancelled(SaftError):
    """Raised inside a long-running stage when the caller's cancellation callback says so."""

    code = "cancelled"

    def __init__(self, message: str = "cancelled by request") -> None:
        super().__init__(message)
