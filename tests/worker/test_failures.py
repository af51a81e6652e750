"""The worker's failure mapping: what ended a run -> the (code, message) its client sees."""

from __future__ import annotations

import errno

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from saft_core.errors import Cancelled, ConfigError, DataError, ModelError
from saft_service.jobspec import JobSpec
from worker.failures import INTERNAL_ERROR, STORAGE_FULL, job_failure

SPEC = JobSpec.model_construct(dataset_id="ds_x", model="saft-tiny", pretrained="weights/mine.bin")


def failure(error: BaseException) -> tuple[str, str]:
    return job_failure(error, SPEC, time_limit_s=600)


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (ConfigError("ratio must be in (0, 1), got 0.0"), "invalid_config", "ratio must be in (0, 1), got 0.0"),
        (DataError("class 'cat' has no images"), "invalid_dataset", "class 'cat' has no images"),
        (ModelError("unknown model 'x'"), "model_unavailable", "unknown model 'x'"),
        (Cancelled(), "cancelled", "cancelled by request"),
        (SoftTimeLimitExceeded(), "time_limit", "longer than the 600 s limit"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out_of_memory", "the GPU"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), "out_of_memory", "lower batch_size or scoring"),
        (MemoryError(), "out_of_memory", "the worker ran out of memory"),
        (OSError(errno.ENOSPC, "No space left on device", "/srv/saft/jobs/x/ckpt.tmp"), *STORAGE_FULL),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), *STORAGE_FULL),
        (KeyError("secret/path/in/a/key"), INTERNAL_ERROR, "unexpected error in the worker (KeyError)"),
        (RuntimeError("CUDA error: an illegal memory access"), INTERNAL_ERROR, "(RuntimeError)"),
    ],
    ids=["config", "data", "model", "cancelled", "time-limit", "gpu-oom", "cuda-oom", "host-oom", "disk-full",
         "quota", "unknown", "runtime-error-is-not-oom"],
)
def test_each_failure_has_its_code_and_message(error: BaseException, code: str, says: str) -> None:
    got_code, message = failure(error)
    assert got_code == code
    assert says in message


def test_a_storage_error_raised_from_another_is_still_storage_full() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("could not write the checkpoint") from e
    except RuntimeError as wrapped:
        assert failure(wrapped) == STORAGE_FULL


def test_messages_of_unknown_errors_leak_no_paths_or_contents() -> None:
    code, message = failure(ValueError("cannot parse /srv/saft/datasets/ds_1/secret.txt: 'password=hunter2'"))
    assert code == INTERNAL_ERROR
    assert "/srv" not in message and "hunter2" not in message


def test_a_model_that_fails_to_load_names_the_model_not_the_bytes() -> None:
    code, message = failure(ModelError("cannot load model 'saft-tiny': unexpected key b'\\x89PNG' in state dict"))
    assert code == "model_unavailable"
    assert "'saft-tiny'" in message and "'weights/mine.bin'" in message
    assert "PNG" not in message


def test_the_mapping_does_not_look_at_the_class_name() -> None:
    class OutOfMemoryError(Exception):  # an unrelated class with torch's name is not an out-of-memory error
        pass

    assert failure(OutOfMemoryError("no"))[0] == INTERNAL_ERROR
