"""What a failed job tells its client: a stable code and a message without server paths or file contents.

``job_failure`` is the one place that maps what ended a run (an exception) to that pair. It is pure: the runner
logs the full error, with paths, in the worker's log and records the pair through the job state machine.
"""

from __future__ import annotations

import torch
from celery.exceptions import SoftTimeLimitExceeded

from saft_core.errors import SaftError
from saft_service.jobspec import JobSpec
from saft_service.storage import is_storage_full

INTERNAL_ERROR = "internal_error"
STORAGE_FULL = ("storage_full", "the service's storage is full; the job's partial outputs were removed")

# torch >= 2.5 raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class there); older
# versions have only the CUDA one. Either is a RuntimeError, not a MemoryError.
_GPU_OUT_OF_MEMORY: tuple[type[BaseException], ...] = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t}
)


def job_failure(error: BaseException, spec: JobSpec, *, time_limit_s: int) -> tuple[str, str]:
    """The code and message of a job that ended with ``error``; ``time_limit_s`` is the worker's time limit.

    The core's own errors (``SaftError``, cancellation included) keep their code; anything the mapping does not
    know is ``internal_error``, whose message names only the exception's type.
    """
    if isinstance(error, SaftError):
        return _core_failure(error, spec)
    if isinstance(error, SoftTimeLimitExceeded):
        return (
            "time_limit",
            f"the job ran longer than the {time_limit_s} s limit; use fewer epochs or a smaller dataset",
        )
    if _GPU_OUT_OF_MEMORY and isinstance(error, _GPU_OUT_OF_MEMORY):
        return "out_of_memory", "the GPU ran out of memory; lower batch_size or scoring_batch_size"
    if isinstance(error, MemoryError):
        return "out_of_memory", "the worker ran out of memory; lower batch_size"
    if is_storage_full(error):
        return STORAGE_FULL
    return INTERNAL_ERROR, f"unexpected error in the worker ({type(error).__name__}); please report it with the job id"


def _core_failure(error: SaftError, spec: JobSpec) -> tuple[str, str]:
    """A model that failed to load says which model, not what the weights reader said about the bytes it read."""
    if error.code == "model_unavailable" and error.message.startswith("cannot load model"):
        return (
            error.code,
            f"cannot load model {spec.model!r} with pretrained {spec.pretrained!r}: the weights are not a "
            "checkpoint of this architecture or are damaged",
        )
    return error.code, error.message
