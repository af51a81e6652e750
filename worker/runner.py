"""Run one job, as the Celery task hands it over (``run_job``), in four steps read top to bottom:

1. load the row and claim it (a duplicate or stale message ends here), into an ``Attempt``;
2. map the stored spec onto the core's config, once;
3. hand the work to the core (``saft_core.pipeline.finetune``, or the ``finetune`` given) with callbacks that
   write progress and events and poll for cancellation; cancellation is also checked before the hand-over;
4. record the result through ``saft_service.outcomes`` (the rows are built there, not here).

A step that ends the attempt early raises ``Ended`` with the attempt's ``Ending``; every attempt, whatever ended
it, then goes through ``_settle`` once, which writes a failure or cancellation and removes the files that ending
leaves no use for:

    ending       the row                                      files removed
    succeeded    succeeded (written by step 4)                the snapshots (resume/)
    failed       failed with its code, or cancelled           the job dir (every attempt's outputs, snapshots)
    lost         untouched: another attempt owns the job      this attempt's own outputs only
    unrecorded   left running (the database stayed down)      none: the next attempt resumes from the snapshots

Nothing half-written survives: outputs go to the attempt's own directory, which is deleted unless the attempt
succeeds, and the success row (checkpoint, mask, evaluations, status) is one transaction.

Liveness (see saft_service/reaper.py; the heartbeat and the callbacks are in reporting.py): while the job
runs, a thread writes its heartbeat every ``heartbeat_interval`` seconds, fenced by the attempt number the claim
returned. When a heartbeat finds the job no longer its own (requeued after a stall, cancelled while its worker
seemed gone), the run stops at the next step and touches neither the row nor the files of the attempt that took
over. The core snapshots the training state into ``<job dir>/resume``, so a requeued job resumes where it was.
A database that is down makes progress writes skip (they are best effort) and the writes that end a job retry
for ``db_retry_seconds``; after that the job is left running and the reaper requeues it once its heartbeat is
stale.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from sqlalchemy.exc import DBAPIError

from saft_core.config import FinetuneConfig, SnapshotConfig
from saft_core.errors import Cancelled, SaftError
from saft_core.results import Callbacks, FinetuneResult
from saft_service import jobs, outcomes
from saft_service.allowed_models import resolve_pretrained
from saft_service.db import session_scope
from saft_service.dispatch import dispatch_soon
from saft_service.jobspec import JobSpec, stored_spec, to_finetune_config
from saft_service.logs import add_to_context, log_context
from saft_service.metrics import JOB_ATTEMPTS, JOB_SECONDS
from saft_service.settings import Settings, get_settings
from saft_service.storage import Storage, client_message, is_storage_full, remove_tree
from saft_service.tables import Dataset, Job, Tenant
from saft_service.usage import StorageQuotaExceeded

from .failures import INTERNAL_ERROR, STORAGE_FULL, job_failure
from .reporting import Heartbeat, JobReporter

log = logging.getLogger(__name__)
T = TypeVar("T")

RESUME_DIR = "resume"

Finetune = Callable[[FinetuneConfig, Path, Callbacks], FinetuneResult]
"""What step 3 calls: ``saft_core.pipeline.finetune``'s signature (config, output folder, callbacks)."""


@dataclass(frozen=True)
class Attempt:
    """One claimed run of a job: what the steps after the claim need, read in the claim's transaction."""

    job_id: str
    number: int  # the job's ``attempts`` after the claim: the lease every write of this run is fenced by
    spec: JobSpec  # the stored request, trusted: it was validated when it was submitted
    datasets: dict[str, Dataset]  # the spec's datasets that still exist, by id
    settings: Settings

    @property
    def storage(self) -> Storage:
        return Storage(self.settings)

    @property
    def job_dir(self) -> Path:
        return self.storage.job_dir(self.job_id)

    @property
    def out_dir(self) -> Path:
        """This attempt's outputs (checkpoint, mask): its own folder; a lost attempt never writes another's."""
        return self.job_dir / f"attempt-{self.number}"

    @property
    def resume_dir(self) -> Path:
        """The core's snapshots, shared by the job's attempts: the next one resumes from them."""
        return self.job_dir / RESUME_DIR


@dataclass(frozen=True)
class Ending:
    """How an attempt ended (see the module docstring's table). ``failed`` carries the code and the message the
    client sees; code ``cancelled`` ends the job cancelled."""

    kind: Literal["succeeded", "failed", "lost", "unrecorded"]
    code: str = ""
    message: str = ""

    @classmethod
    def failed(cls, code: str, message: str) -> Ending:
        return cls("failed", code, message)


class Ended(Exception):
    """Raised by a step that ends the attempt early; ``_settle`` does what ``ending`` asks."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.kind, ending.code)
        self.ending = ending


def run_job(
    job_id: str, *, worker: str, redelivered: bool = False, settings: Settings | None = None,
    finetune: Finetune | None = None,
) -> None:
    """Run job ``job_id`` to its end (succeeded, failed or cancelled). Never raises for a job's own failure;
    raises a database error only before the job was claimed (the task then retries the message).

    ``finetune`` replaces the core's pipeline (tests give a stub); by default the core is imported when the job
    starts, so CUDA is first touched in the process running the job."""
    settings = settings or get_settings()
    with log_context(job_id=job_id):  # every log line of the run names the job (and its tenant, once claimed)
        attempt = _claim(job_id, worker=worker, redelivered=redelivered, settings=settings)
        # The message left the broker's window: the next job in turn goes there (saft_service/dispatch.py).
        dispatch_soon(settings)
        if attempt is not None:
            _run(attempt, finetune or _core_finetune)


def _claim(job_id: str, *, worker: str, redelivered: bool, settings: Settings) -> Attempt | None:
    """1. Load the row and claim it; None: a duplicate or stale message, dropped."""
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
            return None
        # The stored request, trusted. Whether this version of the core can still run it is decided when it is
        # mapped onto the core's config (step 2).
        spec = stored_spec(job.spec)
        tenant = s.get(Tenant, job.tenant_id)
        add_to_context(tenant=tenant.name if tenant else job.tenant_id)
        # read in the claim's transaction: a database error here leaves the job unclaimed and the message retried
        found = s.query(Dataset).filter(Dataset.id.in_(spec.dataset_ids), Dataset.tenant_id == job.tenant_id)
        rows = {d.id: d for d in found}
        return Attempt(job_id=job_id, number=job.attempts, spec=spec, datasets=rows, settings=settings)


def _run(attempt: Attempt, finetune: Finetune) -> None:
    """Steps 2 to 4 under the attempt's heartbeat, then ``_settle``: the one way out."""
    for leftover in attempt.job_dir.glob("attempt-*"):  # outputs of attempts whose worker was lost
        remove_tree(leftover)
    JOB_ATTEMPTS.labels("first" if attempt.number == 1 else "retry").inc()
    started = time.monotonic()
    try:
        with Heartbeat(attempt.job_id, attempt.number, attempt.settings) as heartbeat:
            reporter = JobReporter(attempt.job_id, attempt.settings, attempt.number, heartbeat)
            try:
                cfg = _core_config(attempt)
                _stop_if_cancelled(attempt, reporter)
                result = _hand_to_core(attempt, cfg, reporter, finetune)
                ending = _record(attempt, result, reporter.training_steps)
            except Ended as e:
                ending = e.ending
            _settle(attempt, ending, started)
    finally:
        JOB_SECONDS.labels(_status_after(attempt)).observe(time.monotonic() - started)
        release_device_memory()


def _core_config(attempt: Attempt) -> FinetuneConfig:
    """2. Map the spec onto the core's config, once; snapshots go where the next attempt will look."""
    spec, settings, rows = attempt.spec, attempt.settings, attempt.datasets
    missing = [i for i in spec.dataset_ids if i not in rows]
    if missing:
        listed = ", ".join(missing)
        raise Ended(Ending.failed(
            "dataset_missing", f"dataset(s) {listed} were deleted before the job ran; upload them again"
        ))
    try:
        folders = {i: attempt.storage.dataset_files(rows[i]) for i in spec.dataset_ids}
    except ValueError as e:  # an external dataset whose import root the operator has since removed
        raise Ended(Ending.failed("dataset_missing", str(e))) from None
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
        raise Ended(Ending.failed(*job_failure(e, spec, time_limit_s=settings.job_time_limit))) from None
    return replace(
        cfg,
        snapshot=SnapshotConfig(
            dir=str(attempt.resume_dir),
            interval_s=settings.snapshot_interval,
            dense_interval_s=settings.dense_snapshot_interval,
        ),
    )


def _stop_if_cancelled(attempt: Attempt, reporter: JobReporter) -> None:
    """Between two steps: end the attempt if the job is no longer its own or its cancellation was asked for."""
    if reporter.lost:
        raise Ended(Ending("lost"))
    if reporter.cancel_requested():
        raise Ended(Ending.failed(Cancelled.code, Cancelled().message))


def _hand_to_core(
    attempt: Attempt, cfg: FinetuneConfig, reporter: JobReporter, finetune: Finetune
) -> FinetuneResult:
    """3. The core's run, into the attempt's own folder; whatever it raises becomes the attempt's ending."""
    settings = attempt.settings
    try:
        attempt.out_dir.mkdir(parents=True, exist_ok=True)
        prepare_device(settings)
        result = finetune(cfg, attempt.out_dir, reporter.callbacks())
        reporter.end_stage()
        return result
    except Exception as e:
        if isinstance(e, Cancelled) and reporter.lost:
            raise Ended(Ending("lost")) from None  # another attempt (or a cancel of a lost job) owns the job now
        code, message = job_failure(e, attempt.spec, time_limit_s=settings.job_time_limit)
        if code == INTERNAL_ERROR:
            log.exception("job %s crashed", attempt.job_id)
        elif not isinstance(e, Cancelled):
            # the full error, paths included, stays in the worker's log
            log.error("job %s failed (%s): %s", attempt.job_id, code, e)
        raise Ended(Ending.failed(code, message)) from None


def _core_finetune(cfg: FinetuneConfig, out_dir: Path, callbacks: Callbacks) -> FinetuneResult:
    """The core's pipeline, imported here: CUDA is first touched in the process that runs the job."""
    from saft_core.pipeline import finetune

    return finetune(cfg, out_dir, callbacks)


def _record(attempt: Attempt, result: FinetuneResult, training_steps: int) -> Ending:
    """4. Record the result in one transaction, retried while the database is down."""
    settings = attempt.settings

    def write() -> bool:
        with session_scope(settings) as s:
            return outcomes.record_success(
                s, attempt.job_id, result, attempt=attempt.number, training_steps=training_steps,
                settings=settings,
            )

    try:
        what = f"job {attempt.job_id}: recording its result"
        owned = with_db_retry(what, write, seconds=settings.db_retry_seconds)
    except DBAPIError:
        # Still unreachable: leave the job running. Its heartbeat goes stale, the reaper requeues it, and the
        # next attempt resumes from the final snapshot (training is not done again).
        log.error("job %s: could not record its result; it will be requeued and resumed", attempt.job_id)
        return Ending("unrecorded")
    except StorageQuotaExceeded as e:
        return Ending.failed(e.code, f"{e.message}; the job's outputs were removed")
    except Exception as e:
        log.exception("job %s: could not record its result", attempt.job_id)
        if is_storage_full(e):
            return Ending.failed(*STORAGE_FULL)
        return Ending.failed(INTERNAL_ERROR, "could not store the job's result; please report it with the job id")
    if not owned:
        log.warning("job %s: attempt %s finished, but the job is no longer its own; result dropped",
                    attempt.job_id, attempt.number)
        return Ending("lost")
    return Ending("succeeded")


def _settle(attempt: Attempt, ending: Ending, started: float) -> None:
    """The one clean-up of an attempt: write a failure or cancellation (retried while the database is down) and
    remove the files the ending leaves no use for (the module docstring's table)."""
    job_id, settings = attempt.job_id, attempt.settings
    if ending.kind == "succeeded":
        remove_tree(attempt.resume_dir)
        log.info("job %s succeeded in %.1f s (attempt %s)", job_id, time.monotonic() - started, attempt.number)
        return
    if ending.kind == "unrecorded":
        return  # the reaper requeues the job; its next attempt resumes from the snapshots and cleans up
    if ending.kind == "lost":
        remove_tree(attempt.out_dir)  # the row, the snapshots and the other attempts' folders are another's now
        return
    message = client_message(ending.message, settings)

    def write() -> bool:
        with session_scope(settings) as s:
            return outcomes.record_end(s, job_id, ending.code, message, attempt=attempt.number)

    try:
        owned = with_db_retry(f"job {job_id}: recording its end", write, seconds=settings.db_retry_seconds)
    except DBAPIError:
        log.error("job %s: could not record its end (%s); the reaper will requeue it", job_id, ending.code)
        return
    if owned:
        remove_tree(attempt.job_dir)
        log.info("job %s ended: %s (%s)", job_id, ending.code, message)
    else:
        remove_tree(attempt.out_dir)
        log.warning("job %s: attempt %s no longer owns the job; its end (%s) is not recorded",
                    job_id, attempt.number, ending.code)


def _status_after(attempt: Attempt) -> str:
    """The job's status once ``attempt`` is over, for its metric: ``abandoned`` when the attempt no longer
    owns the job (requeued, or left running for the reaper), ``unknown`` when the database cannot say."""
    try:
        with session_scope(attempt.settings) as s:
            job = s.get(Job, attempt.job_id)
            if job is None:
                return "deleted"
            if job.attempts != attempt.number or job.status not in jobs.TERMINAL:
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
