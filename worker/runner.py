"""Run one job: claim the row, map it onto the core's config, call ``saft_core.pipeline.finetune`` with
callbacks that write progress and events, and record the outcome through the job state machine.

Nothing half-written survives: outputs go to the attempt's own directory, which is deleted unless the attempt
succeeds, and the success row (checkpoint, mask, evaluations, status) is one transaction.

Liveness (see saft_service/reaper.py): while the job runs, a thread writes its heartbeat every
``heartbeat_interval`` seconds, fenced by the attempt number the claim returned. When a heartbeat finds the job
no longer its own (requeued after a stall, cancelled while its worker seemed gone), the run stops at the next
step and touches neither the row nor the files of the attempt that took over. The core snapshots the training
state into ``<job dir>/resume``, so a requeued job resumes where it was. A database that is down makes progress
writes skip (they are best effort) and the writes that end a job retry for ``db_retry_seconds``; after that the
job is left running and the reaper requeues it once its heartbeat is stale.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from saft_core.config import SnapshotConfig
from saft_core.errors import Cancelled, SaftError
from saft_core.frontier import RULE
from saft_core.results import Callbacks, FinetuneResult, Progress
from saft_service import jobs
from saft_service.allowed_models import resolve_pretrained
from saft_service.db import session_scope
from saft_service.dispatch import dispatch_soon
from saft_service.jobspec import JobSpec, stored_spec, to_finetune_config
from saft_service.logs import add_to_context, log_context
from saft_service.metrics import JOB_ATTEMPTS, JOB_SECONDS, STAGE_SECONDS
from saft_service.settings import Settings, get_settings
from saft_service.storage import Storage, client_message, is_storage_full, remove_tree, sha256_file
from saft_service.tables import Checkpoint, Dataset, Evaluation, Job, Mask, MaskTensor, Tenant, utcnow
from saft_service.usage import StorageQuotaExceeded, lock_tenant, tenant_usage

from .failures import INTERNAL_ERROR, STORAGE_FULL, job_failure

log = logging.getLogger(__name__)
T = TypeVar("T")

RESUME_DIR = "resume"


class LeaseLost(Exception):
    """The job is no longer this process's attempt (requeued or ended by someone else)."""


def with_db_retry(what: str, fn: Callable[[], T], *, seconds: float) -> T:
    """Call ``fn`` until it does not fail with a database error, backing off, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return fn()
        except DBAPIError as e:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database error (%s); retrying in %.1f s", what, type(e).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


class Heartbeat:
    """A daemon thread that writes the job's heartbeat every ``settings.heartbeat_interval`` seconds.

    ``lost`` becomes true when a heartbeat finds the job no longer running in ``attempt``. Database errors are
    logged and retried at the next beat: the reaper decides, from the row, when silence means a lost worker.
    """

    def __init__(self, job_id: str, attempt: int, settings: Settings) -> None:
        self.job_id, self.attempt, self.settings = job_id, attempt, settings
        self.lost = False
        self._stop = threading.Event()
        # run in a copy of this context, so that its log lines carry the job's ids
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name=f"heartbeat-{job_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        try:
            with session_scope(self.settings) as s:
                if not jobs.heartbeat(s, self.job_id, self.attempt):
                    self.lost = True
        except Exception as e:  # never let the thread die: a silent heartbeat would get the job requeued
            log.warning("job %s: heartbeat not written (%s)", self.job_id, type(e).__name__)

    def _run(self) -> None:
        while not self.lost and not self._stop.wait(self.settings.heartbeat_interval):
            self.beat()
        # A beat that raced the job's own end (its result committed, the heartbeat about to stop) is no loss: said
        # only when the run has not ended within a second.
        if self.lost and not self._stop.wait(1.0):
            log.warning("job %s: attempt %s is no longer the job's; stopping it", self.job_id, self.attempt)


class JobReporter:
    """The core's callbacks for one job: stage changes, throttled progress, messages, cancellation polls.

    Progress updates the row at most every ``progress_interval`` seconds (and at the end of a stage) and adds a
    progress event at most every ``10 * progress_interval``; the cancellation flag is read at most once a second.
    """

    def __init__(self, job_id: str, settings: Settings, attempt: int, heartbeat: Heartbeat | None = None) -> None:
        self.job_id = job_id
        self.settings = settings
        self.attempt = attempt
        self.heartbeat = heartbeat
        self._last_row = 0.0
        self._last_event = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self.training_steps = 0
        self._stage: tuple[str, float] | None = None  # the stage running and when it began (for its metric)

    def _write(self, what: str, fn: Callable[[object], object]) -> None:
        """A best-effort write about the running job: skipped (and logged) while the database is down."""
        try:
            with session_scope(self.settings) as s:
                fn(s)
        except DBAPIError as e:
            log.warning("job %s: %s not recorded (%s)", self.job_id, what, type(e).__name__)

    def end_stage(self) -> None:
        """The running stage is complete: observe its duration."""
        if self._stage is not None:
            name, began = self._stage
            STAGE_SECONDS.labels(name).observe(time.monotonic() - began)
            self._stage = None

    def on_stage(self, stage: str) -> None:
        log.info("job %s: stage %s", self.job_id, stage)
        self.end_stage()
        self._stage = (stage, time.monotonic())
        self._write("stage", lambda s: jobs.set_stage(s, self.job_id, stage, attempt=self.attempt))
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
        if p.loss is not None and math.isfinite(p.loss):  # a loss that overflowed: JSON cannot hold it
            metrics["train_loss"] = float(p.loss)
        if p.lr is not None:
            metrics["learning_rate"] = float(p.lr)
        self._write(
            "progress",
            lambda s: jobs.report_progress(
                s, self.job_id, stage=p.stage, step=p.step, total=p.total, metrics=metrics, event=event,
                attempt=self.attempt,
            ),
        )
        self._last_row = now
        if event:
            self._last_event = now

    def on_message(self, level: str, text: str) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, "job %s: %s", self.job_id, text)
        shown = client_message(text, self.settings)
        self._write("message", lambda s: jobs.add_message(s, self.job_id, level, shown, attempt=self.attempt))

    def should_cancel(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost:
            return True  # the core raises Cancelled; run_job tells the two apart by ``heartbeat.lost``
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= 1.0:
            self._last_cancel_check = now
            try:
                with session_scope(self.settings) as s:
                    self._cancel = jobs.cancel_requested(s, self.job_id)
            except DBAPIError as e:
                log.warning("job %s: cancellation not checked (%s)", self.job_id, type(e).__name__)
        return self._cancel

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_message=self.on_message,
            should_cancel=self.should_cancel,
        )


def _end(job_id: str, attempt: int, job_dir: Path, settings: Settings, code: str, message: str) -> None:
    """End the attempt's job as failed (``code``) or cancelled; its files (snapshots included) go. The message
    is what the client sees: paths are redacted."""
    message = client_message(message, settings)

    def write() -> bool:
        with session_scope(settings) as s:
            if code == "cancelled":
                return jobs.mark_cancelled(s, job_id, attempt=attempt)
            return jobs.fail(s, job_id, code, message, attempt=attempt)

    try:
        owned = with_db_retry(f"job {job_id}: recording its end", write, seconds=settings.db_retry_seconds)
    except DBAPIError:
        log.error("job %s: could not record its end (%s); the reaper will requeue it", job_id, code)
        return
    if owned:
        remove_tree(job_dir)
        log.info("job %s ended: %s (%s)", job_id, code, message)
    else:
        log.warning("job %s: attempt %s no longer owns the job; its end (%s) is not recorded", job_id, attempt, code)


def _record_success(
    job_id: str, attempt: int, result: FinetuneResult, storage: Storage, settings: Settings, training_steps: int
) -> bool:
    """Store the attempt's outputs and end the job as succeeded, in one transaction. False: the job is no
    longer this attempt's (nothing was stored)."""
    ckpt = Path(result.checkpoint_path)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} was deleted while it ran")
        # The outputs count against the tenant's storage quota (raises StorageQuotaExceeded, nothing stored).
        mpath = Path(result.mask_path) if result.mask_path else None
        ckpt_bytes, mask_bytes = ckpt.stat().st_size, (mpath.stat().st_size if mpath else None)
        lock_tenant(s, job.tenant_id)
        tenant_usage(s, job.tenant_id, settings).check(ckpt_bytes + (mask_bytes or 0))
        checkpoint = Checkpoint(
            job_id=job_id,
            path=storage.relative(ckpt),
            sha256=sha256_file(ckpt),
            size_bytes=ckpt_bytes,
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
            mask = Mask(
                job_id=job_id,
                ratio=result.mask.ratio,
                k=result.mask.k,
                num_eligible=result.mask.num_eligible,
                num_params=result.mask.num_params,
                path=storage.relative(mpath) if mpath else None,
                sha256=sha256_file(mpath) if mpath else None,
                size_bytes=mask_bytes,
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
        # A loss that overflowed is not a number JSON can hold; the loss_diverged warning says what it was.
        metrics = {k: float(v) for k, v in (result.metrics or {}).items() if math.isfinite(v)}
        if not jobs.succeed(
            s,
            job_id,
            metrics=metrics,
            checkpoint=checkpoint,
            mask=mask,
            evaluations=evaluations,
            training_steps=training_steps,
            warnings=[w.to_dict() for w in result.warnings],
            attempt=attempt,
        ):
            s.rollback()
            # A retry after a commit whose reply was lost finds its own success: that is still ours.
            done = s.get(Job, job_id)
            return done is not None and done.status == jobs.JobStatus.SUCCEEDED and done.attempts == attempt
    return True


def run_job(job_id: str, *, worker: str, redelivered: bool = False, settings: Settings | None = None) -> None:
    """Run job ``job_id`` to its end (succeeded, failed or cancelled). Never raises for a job's own failure;
    raises a database error only before the job was claimed (the task then retries the message)."""
    with log_context(job_id=job_id):  # every log line of the run names the job (and its tenant, once claimed)
        _run_job(job_id, worker=worker, redelivered=redelivered, settings=settings or get_settings())


def _run_job(job_id: str, *, worker: str, redelivered: bool, settings: Settings) -> None:
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
        if job is not None:
            # The stored request, trusted: it was validated when it was submitted. Whether this version of the
            # core can still run it is decided when it is mapped onto the core's config (step 2 of
            # ``_run_claimed``).
            attempt, spec = job.attempts, stored_spec(job.spec)
            tenant = s.get(Tenant, job.tenant_id)
            add_to_context(tenant=tenant.name if tenant else job.tenant_id)
            # read in the claim's transaction: a database error here leaves the job unclaimed and the message
            # retried
            ids = [spec.dataset_id, *spec.eval_dataset_ids]
            rows = {
                d.id: d for d in s.query(Dataset).filter(Dataset.id.in_(ids), Dataset.tenant_id == job.tenant_id)
            }
    # The message left the broker's window: the next job in turn goes there (saft_service/dispatch.py).
    dispatch_soon(settings)
    if job is None:
        return
    job_dir = storage.job_dir(job_id)
    out_dir = job_dir / f"attempt-{attempt}"
    for leftover in job_dir.glob("attempt-*"):  # outputs of attempts whose worker was lost
        remove_tree(leftover)
    JOB_ATTEMPTS.labels("first" if attempt == 1 else "retry").inc()
    started = time.monotonic()
    try:
        with Heartbeat(job_id, attempt, settings) as heartbeat:
            _run_claimed(job_id, attempt, spec, rows, job_dir, out_dir, storage, settings, heartbeat)
    finally:
        JOB_SECONDS.labels(_status_after(job_id, attempt, settings)).observe(time.monotonic() - started)
        release_device_memory()


def _status_after(job_id: str, attempt: int, settings: Settings) -> str:
    """The job's status once ``attempt`` is over, for its metric: ``abandoned`` when the attempt no longer
    owns the job (requeued, or left running for the reaper), ``unknown`` when the database cannot say."""
    try:
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            if job is None:
                return "deleted"
            if job.attempts != attempt or job.status not in jobs.TERMINAL:
                return "abandoned"
            return str(job.status)
    except Exception:
        return "unknown"


def prepare_device(settings: Settings) -> None:
    """Cap this process's share of the GPU (``SAFT_CUDA_MEMORY_FRACTION``) before a job allocates on it."""
    import torch

    if settings.cuda_memory_fraction is None or not torch.cuda.is_available():
        return
    device = torch.device(settings.device or "cuda")
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(settings.cuda_memory_fraction, device)


def release_device_memory() -> None:
    """After a job, whatever it ended with (out of memory included): drop its tensors and hand the GPU memory
    PyTorch cached back to the device, so that the next job, or another process on the GPU, starts clean."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _run_claimed(
    job_id: str,
    attempt: int,
    spec: JobSpec,
    rows: dict[str, Dataset],
    job_dir: Path,
    out_dir: Path,
    storage: Storage,
    settings: Settings,
    heartbeat: Heartbeat,
) -> None:
    def end(code: str, message: str) -> None:
        _end(job_id, attempt, job_dir, settings, code, message)

    missing = [i for i in [spec.dataset_id, *spec.eval_dataset_ids] if i not in rows]
    if missing:
        end("dataset_missing", f"dataset(s) {', '.join(missing)} were deleted before the job ran; upload them again")
        return
    # 2. Map the spec onto the core's config, once; snapshots go where the next attempt will look.
    try:
        folders = {i: storage.dataset_files(rows[i]) for i in [spec.dataset_id, *spec.eval_dataset_ids]}
    except ValueError as e:  # an external dataset whose import root the operator has since removed
        end("dataset_missing", str(e))
        return
    try:
        cfg = to_finetune_config(
            spec.model_copy(update={"pretrained": resolve_pretrained(spec.pretrained, settings)}),
            train_dir=folders[spec.dataset_id],
            eval_dirs={i: folders[i] for i in spec.eval_dataset_ids},
            device=settings.device,
            workers=settings.data_workers,
            precision=settings.precision,
        )
    except SaftError as e:  # a range the core has tightened since the job was stored: invalid_config
        end(*job_failure(e, spec, time_limit_s=settings.job_time_limit))
        return
    cfg = replace(
        cfg,
        snapshot=SnapshotConfig(
            dir=str(job_dir / RESUME_DIR),
            interval_s=settings.snapshot_interval,
            dense_interval_s=settings.dense_snapshot_interval,
        ),
    )
    # 3. Hand the work to the core (imported here, so CUDA is first touched in the process running the job).
    reporter = JobReporter(job_id, settings, attempt, heartbeat)
    started = time.monotonic()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        from saft_core.pipeline import finetune

        prepare_device(settings)
        result = finetune(cfg, out_dir, reporter.callbacks())
        reporter.end_stage()
    except Exception as e:
        if isinstance(e, Cancelled) and heartbeat.lost:
            remove_tree(out_dir)  # another attempt (or a cancel of a lost job) owns the row and the job dir now
            return
        code, message = job_failure(e, spec, time_limit_s=settings.job_time_limit)
        if code == INTERNAL_ERROR:
            log.exception("job %s crashed", job_id)
        elif not isinstance(e, Cancelled):
            log.error("job %s failed (%s): %s", job_id, code, e)  # the full error, paths included, stays here
        end(code, message)
        return
    # 4. Record the outcome in one transaction (retried while the database is down).
    try:
        owned = with_db_retry(
            f"job {job_id}: recording its result",
            lambda: _record_success(job_id, attempt, result, storage, settings, reporter.training_steps),
            seconds=settings.db_retry_seconds,
        )
    except DBAPIError:
        # Still unreachable: leave the job running. Its heartbeat goes stale, the reaper requeues it, and the
        # next attempt resumes from the final snapshot (training is not done again).
        log.error("job %s: could not record its result; it will be requeued and resumed", job_id)
        return
    except StorageQuotaExceeded as e:
        end(e.code, f"{e.message}; the job's outputs were removed")
        return
    except Exception as e:
        log.exception("job %s: could not record its result", job_id)
        end(*(STORAGE_FULL if is_storage_full(e) else (
            INTERNAL_ERROR, "could not store the job's result; please report it with the job id")))
        return
    if not owned:
        remove_tree(out_dir)
        log.warning("job %s: attempt %s finished, but the job is no longer its own; result dropped", job_id, attempt)
        return
    remove_tree(job_dir / RESUME_DIR)
    log.info("job %s succeeded in %.1f s (attempt %s)", job_id, time.monotonic() - started, attempt)
