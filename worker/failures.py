"""What a failed job tells its client: a stable code and a message without server paths or file contents.

The full error, with paths, stays in the worker's log.
"""

from __future__ import annotations

import logging

from saft_core.errors import SaftError
from saft_service.jobspec import JobSpec

log = logging.getLogger(__name__)

STORAGE_FULL = ("storage_full", "the service's storage is full; the job's partial outputs were removed")


def saft_failure(error: SaftError, spec: JobSpec) -> tuple[str, str]:
    """The code and message of a job the core refused. A model that failed to load says which model, not what
    the weights reader said about the bytes it read."""
    if error.code == "model_unavailable" and error.message.startswith("cannot load model"):
        log.error("job model failed to load: %s", error.message)
        return (
            error.code,
            f"cannot load model {spec.model!r} with pretrained {spec.pretrained!r}: the weights are not a "
            "checkpoint of this architecture or are damaged",
        )
    return error.code, error.message
