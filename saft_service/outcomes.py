"""What the end of a worker's attempt writes: the core's ``FinetuneResult`` mapped onto rows, and the job's
end through the state machine (``jobs.py``).

The worker (``worker/runner.py``) decides how an attempt ended; this module is the one place that turns that
into the job's row, its checkpoint, mask and evaluation rows and its events. Every function writes in the
caller's transaction (the caller commits) and is fenced by the attempt, so a process that lost its job writes
nothing:

    record_success   succeeded, with the outputs' rows, metrics and training-health warnings (quota checked)
    record_end       failed with a code and a message, or cancelled (code ``cancelled``)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from saft_core.errors import Cancelled
from saft_core.frontier import RULE
from saft_core.results import FinetuneResult

from . import jobs
from .settings import Settings
from .storage import Storage, sha256_file
from .tables import Checkpoint, Evaluation, Job, Mask, MaskTensor, utcnow
from .usage import lock_tenant, tenant_usage

CANCELLED = Cancelled.code  # an attempt that stopped on request: the job ends cancelled, not failed


@dataclass(frozen=True)
class ResultRows:
    """The rows and row fields a succeeded run adds: what ``jobs.succeed`` stores."""

    checkpoint: Checkpoint
    mask: Mask | None
    evaluations: list[Evaluation]
    metrics: dict[str, float]
    warnings: list[dict[str, Any]]


def output_bytes(result: FinetuneResult) -> int:
    """Bytes the run's files take (checkpoint and mask): what counts against the tenant's storage quota."""
    return sum(Path(p).stat().st_size for p in (result.checkpoint_path, result.mask_path) if p)


def result_rows(job_id: str, result: FinetuneResult, storage: Storage) -> ResultRows:
    """Map a finished run onto rows. Reads the output files (size and SHA-256); writes nothing."""
    ckpt = Path(result.checkpoint_path)
    checkpoint = Checkpoint(
        job_id=job_id,
        path=storage.relative(ckpt),
        sha256=sha256_file(ckpt),
        size_bytes=ckpt.stat().st_size,
        base_model=result.model.name,
        pretrained=result.model.pretrained,  # as the core resolved it ("default" -> the model's tag)
        base_sha256=result.base_sha256,
        classes=list(result.classes),
        recommended_alpha=result.recommended_alpha,
        alpha_rule=RULE if result.recommended_alpha is not None else None,  # the rule the core applied
        created_at=utcnow(),
    )
    mask = None
    if result.mask is not None:
        mpath = Path(result.mask_path) if result.mask_path else None
        mask = Mask(
            job_id=job_id,
            ratio=result.mask.ratio,
            k=result.mask.k,
            num_eligible=result.mask.num_eligible,
            num_params=result.mask.num_params,
            path=storage.relative(mpath) if mpath else None,
            sha256=sha256_file(mpath) if mpath else None,
            size_bytes=mpath.stat().st_size if mpath else None,
            tensors=[
                MaskTensor(job_id=job_id, position=i, name=t.name, numel=t.numel, selected=t.selected)
                for i, t in enumerate(result.mask.tensors)
            ],
        )
    evaluations = [
        Evaluation(
            job_id=job_id,
            dataset=e.dataset,
            model=e.model,
            alpha=float(e.alpha),
            top1=float(e.top1),
            top5=float(e.top5),
            n=int(e.n),
            num_classes=int(e.num_classes),
        )
        for e in result.evaluations
    ]
    return ResultRows(
        checkpoint=checkpoint,
        mask=mask,
        evaluations=evaluations,
        # A loss that overflowed is not a number JSON can hold; the loss_diverged warning says what it was.
        metrics={k: float(v) for k, v in (result.metrics or {}).items() if math.isfinite(v)},
        warnings=[w.to_dict() for w in result.warnings],
    )


def record_success(
    session: Session, job_id: str, result: FinetuneResult, *, attempt: int, training_steps: int,
    settings: Settings,
) -> bool:
    """Store a finished run's outputs and end the job as succeeded (one transaction, the caller's). False: the
    job is no longer ``attempt``'s and nothing was stored. Raises ``StorageQuotaExceeded`` (nothing stored) when
    the outputs do not fit the tenant's quota, and ``RuntimeError`` when the job was deleted while it ran."""
    job = session.get(Job, job_id)
    if job is None:
        raise RuntimeError(f"job {job_id} was deleted while it ran")
    rows = result_rows(job_id, result, Storage(settings))  # reads and hashes the files: not under the lock
    lock_tenant(session, job.tenant_id)
    tenant_usage(session, job.tenant_id, settings).check(output_bytes(result))
    if jobs.succeed(
        session,
        job_id,
        metrics=rows.metrics,
        checkpoint=rows.checkpoint,
        mask=rows.mask,
        evaluations=rows.evaluations,
        training_steps=training_steps,
        warnings=rows.warnings,
        attempt=attempt,
    ):
        return True
    session.rollback()
    # A retry after a commit whose reply was lost finds its own success: that is still ours.
    done = session.get(Job, job_id)
    return done is not None and done.status == jobs.JobStatus.SUCCEEDED and done.attempts == attempt


def record_end(session: Session, job_id: str, code: str, message: str, *, attempt: int) -> bool:
    """End ``attempt``'s job as cancelled (``code`` is ``cancelled``) or failed with ``code`` and ``message``
    (which the client sees: the caller has redacted paths). False: the job is no longer that attempt's."""
    if code == CANCELLED:
        return jobs.mark_cancelled(session, job_id, attempt=attempt)
    return jobs.fail(session, job_id, code, message, attempt=attempt)
