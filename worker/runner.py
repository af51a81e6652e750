"""Run one job: claim the row, map it onto the core's config, call ``saft_core.pipeline.finetune`` with
callbacks that write progress and events, and record the outcome through the job state machine.

Nothing half-written survives: outputs go to the job's own directory, which is deleted unless the job
succeeds, and the success row (checkpoint, mask, evaluations, status) is one transaction.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from saft_core.checkpoint import read_metadata
from saft_core.errors import Cancelled, SaftError
from saft_core.results import Callbacks, FinetuneResult, Progress
from saft_service import jobs
from saft_service.db import session_scope
from saft_service.jobspec import JobSpec, to_finetune_config
from saft_service.settings import Settings, get_settings
from saft_service.storage import Storage, remove_tree, sha256_file
from saft_service.tables import Checkpoint, Dataset, Evaluation, Job, Mask, MaskTensor, utcnow

log = logging.getLogger(__name__)


class JobReporter:
    """The core's callbacks for one job: stage changes, throttled progress, messages, cancellation polls.

    Progress updates the row at most every ``progress_interval`` seconds (and at the end of a stage) and adds a
    progress event at most every ``10 * progress_interval``; the cancellation flag is read at most once a second.
    """

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.settings = settings
        self._last_row = 0.0
        self._last_event = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self.training_steps = 0

    def on_stage(self, stage: str) -> None:
        log.info("job %s: stage %s", self.job_id, stage)
        with session_scope(self.settings) as s:
            jobs.set_stage(s, self.job_id, stage)
        self._last_row = self._last_event = 0.0

    def on_progress(self, p: Progress) -> None:
        if p.stage == "training":
            self.training_steps = max(self.training_steps, p.total)
        now = time.monotonic()
        last_step = p.step >= p.total
        if not last_step and now - self._last_row < self.settings.progress_interval:
            return
        event = last_step or now - self._last_event >= 10 * self.settings.progress_interval
        metrics = {}
        if p.loss is not None:
            metrics["train_loss"] = float(p.loss)
        if p.lr is not None:
            metrics["learning_rate"] = float(p.lr)
        with session_scope(self.settings) as s:
            jobs.report_progress(
                s, self.job_id, stage=p.stage, step=p.step, total=p.total, metrics=metrics, event=event
            )
        self._last_row = now
        if event:
            self._last_event = now

    def on_message(self, level: str, text: str) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, "job %s: %s", self.job_id, text)
        with session_scope(self.settings) as s:
            jobs.add_message(s, self.job_id, level, text)

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= 1.0:
            self._last_cancel_check = now
            with session_scope(self.settings) as s:
                self._cancel = jobs.cancel_requested(s, self.job_id)
        return self._cancel

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_message=self.on_message,
            should_cancel=self.should_cancel,
        )


def _end(job_id: str, out_dir: Path, settings: Settings, code: str, message: str) -> None:
    remove_tree(out_dir)
    with session_scope(settings) as s:
        if code == "cancelled":
            jobs.mark_cancelled(s, job_id)
        else:
            jobs.fail(s, job_id, code, message)
    log.info("job %s ended: %s (%s)", job_id, code, message)


def _record_success(
    job_id: str, result: FinetuneResult, storage: Storage, settings: Settings, training_steps: int
) -> None:
    ckpt = Path(result.checkpoint_path)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} was deleted while it ran")
        spec = JobSpec.model_validate(job.spec)
        checkpoint = Checkpoint(
            job_id=job_id,
            path=storage.relative(ckpt),
            sha256=sha256_file(ckpt),
            size_bytes=ckpt.stat().st_size,
            base_model=spec.model,
            pretrained=read_metadata(ckpt).get("pretrained", spec.pretrained),  # what the core resolved
            base_sha256=result.base_sha256,
            classes=list(result.classes),
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
                top1=float(e.top1),
                top5=float(e.top5),
                n=int(e.n),
                num_classes=int(e.num_classes),
            )
            for e in result.evaluations
        ]
        metrics = {k: float(v) for k, v in (result.metrics or {}).items()}
        if not jobs.succeed(
            s,
            job_id,
            metrics=metrics,
            checkpoint=checkpoint,
            mask=mask,
            evaluations=evaluations,
            training_steps=training_steps,
        ):
            raise RuntimeError(f"job {job_id} was no longer running when it finished")


def run_job(job_id: str, *, worker: str, redelivered: bool = False, settings: Settings | None = None) -> None:
    """Run job ``job_id`` to its end (succeeded, failed or cancelled). Never raises for a job's own failure."""
    settings = settings or get_settings()
    storage = Storage(settings)
    # 1. Claim the row; a duplicate or stale message is dropped here.
    with session_scope(settings) as s:
        job = jobs.claim(
            s,
            job_id,
            worker=f"{worker}/{os.getpid()}",
            redelivered=redelivered,
            heartbeat_timeout=settings.heartbeat_timeout,
            max_attempts=settings.max_attempts,
        )
        if job is None:
            return
        spec = JobSpec.model_validate(job.spec)
        ids = [spec.dataset_id, *spec.eval_dataset_ids]
        rows = {
            d.id: d for d in s.query(Dataset).filter(Dataset.id.in_(ids), Dataset.tenant_id == job.tenant_id)
        }
    out_dir = storage.job_dir(job_id)
    remove_tree(out_dir)  # leftovers of an attempt whose worker was lost
    missing = [i for i in ids if i not in rows]
    if missing:
        _end(
            job_id,
            out_dir,
            settings,
            "dataset_missing",
            f"dataset(s) {', '.join(missing)} were deleted before the job ran; upload them again",
        )
        return
    # 2. Map the spec onto the core's config, once.
    try:
        cfg = to_finetune_config(
            spec,
            train_dir=storage.absolute(rows[spec.dataset_id].path),
            eval_dirs={i: storage.absolute(rows[i].path) for i in spec.eval_dataset_ids},
            device=settings.device,
            workers=settings.data_workers,
        )
    except SaftError as e:
        _end(job_id, out_dir, settings, e.code, e.message)
        return
    # 3. Hand the work to the core (imported here, so CUDA is first touched in the process running the job).
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = JobReporter(job_id, settings)
    started = time.monotonic()
    try:
        from saft_core.pipeline import finetune

        result = finetune(cfg, out_dir, reporter.callbacks())
    except Cancelled:
        _end(job_id, out_dir, settings, "cancelled", "cancelled by request")
        return
    except SoftTimeLimitExceeded:
        _end(
            job_id,
            out_dir,
            settings,
            "time_limit",
            f"the job ran longer than the {settings.job_time_limit} s limit; use fewer epochs or a smaller dataset",
        )
        return
    except SaftError as e:
        _end(job_id, out_dir, settings, e.code, e.message)
        return
    except MemoryError:
        _end(job_id, out_dir, settings, "out_of_memory", "the worker ran out of memory; lower batch_size")
        return
    except Exception as e:
        if (
            type(e).__name__ == "OutOfMemoryError"
        ):  # torch.cuda.OutOfMemoryError, without importing torch here
            _end(
                job_id,
                out_dir,
                settings,
                "out_of_memory",
                "the GPU ran out of memory; lower batch_size or scoring_batch_size",
            )
            return
        log.exception("job %s crashed", job_id)
        _end(
            job_id,
            out_dir,
            settings,
            "internal_error",
            f"unexpected error in the worker ({type(e).__name__}: {e}); please report it with the job id",
        )
        return
    # 4. Record the outcome in one transaction.
    try:
        _record_success(job_id, result, storage, settings, reporter.training_steps)
    except Exception as e:
        log.exception("job %s: could not record its result", job_id)
        _end(job_id, out_dir, settings, "internal_error", f"could not store the job's result: {e}")
        return
    log.info("job %s succeeded in %.1f s", job_id, time.monotonic() - started)
