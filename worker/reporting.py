"""What a running job writes while it runs: its heartbeat (a thread) and the core's callbacks (stage, progress,
messages, cancellation polls). Every write is fenced by the attempt (``saft_service.jobs``) and best effort: a
database that is down makes it skip, never fails the run. ``runner.py`` runs the job and records its end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from saft_core.results import Callbacks, Progress
from saft_service import jobs
from saft_service.db import session_scope
from saft_service.metrics import STAGE_SECONDS
from saft_service.periodic import Periodic
from saft_service.settings import Settings
from saft_service.storage import client_message

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that writes the job's heartbeat every ``settings.heartbeat_interval`` seconds.

    ``lost`` becomes true when a heartbeat finds the job no longer running in ``attempt``. Database errors are
    logged and retried at the next beat: the reaper decides, from the row, when silence means a lost worker.
    """

    def __init__(self, job_id: str, attempt: int, settings: Settings) -> None:
        self.job_id, self.attempt, self.settings = job_id, attempt, settings
        self.lost = False
        self._thread = Periodic(f"heartbeat-{job_id}", settings.heartbeat_interval, self._tick)

    def __enter__(self) -> Heartbeat:
        self._thread.start()  # in a copy of this context: its log lines carry the job's ids
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.stop()

    def beat(self) -> None:
        try:
            with session_scope(self.settings) as s:
                if not jobs.heartbeat(s, self.job_id, self.attempt):
                    self.lost = True
        except Exception as e:  # never let the thread die: a silent heartbeat would get the job requeued
            log.warning("job %s: heartbeat not written (%s)", self.job_id, type(e).__name__)

    def _tick(self) -> bool:
        self.beat()
        if not self.lost:
            return True
        # A beat that raced the job's own end (its result committed, the heartbeat about to stop) is no loss: said
        # only when the run has not ended within a second.
        if not self._thread.wait(1.0):
            log.warning("job %s: attempt %s is no longer the job's; stopping it", self.job_id, self.attempt)
        return False


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

    def _write(self, what: str, fn: Callable[[Session], object]) -> None:
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

    @property
    def lost(self) -> bool:
        """Whether a heartbeat found the job no longer this attempt's."""
        return self.heartbeat is not None and self.heartbeat.lost

    def should_cancel(self) -> bool:
        """The core's poll, between batches: cheap, so the flag is read at most once a second."""
        if self.lost:
            return True  # the core raises Cancelled; step 3 tells the two apart by ``lost``
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= 1.0:
            self._last_cancel_check = now
            self._cancel = self.cancel_requested()
        return self._cancel

    def cancel_requested(self) -> bool:
        """Whether the user asked to cancel the job, read now (False while the database cannot say)."""
        try:
            with session_scope(self.settings) as s:
                return jobs.cancel_requested(s, self.job_id)
        except DBAPIError as e:
            log.warning("job %s: cancellation not checked (%s)", self.job_id, type(e).__name__)
            return False

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_message=self.on_message,
            should_cancel=self.should_cancel,
        )
