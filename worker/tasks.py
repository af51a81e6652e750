"""Celery tasks. Thin: take an id, hand the work to the runner (which loads the row and calls saft_core)."""

from __future__ import annotations

import multiprocessing
import socket

from celery import Task
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from sqlalchemy.exc import DBAPIError

from saft_service.queue import RUN_JOB_TASK
from saft_service.settings import get_settings
from saft_service.webhooks import WebhookSender

from . import runner
from .app import app


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    # The database unreachable before the job was claimed: send the message again later rather than ack it
    # away (a retry publishes a copy, then acks this one). Errors of the job itself never reach here.
    autoretry_for=(DBAPIError,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def run_job(self: Task[[str], None], job_id: str) -> None:
    """Run fine-tuning job ``job_id``. The job row says what to do; this message only says which job."""
    delivery = self.request.delivery_info or {}
    runner.run_job(
        job_id,
        worker=self.request.hostname or socket.gethostname(),
        redelivered=bool(delivery.get("redelivered")),
    )


@worker_init.connect
def _preload_core(**_: object) -> None:
    """Import the core (torch, open_clip) once, in the worker's main process, so a pool process forked from
    it starts a job at once. Importing does not initialise CUDA: the job does that, in the pool process."""
    import saft_core.pipeline  # noqa: F401


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    """Serve the worker's metrics on ``SAFT_WORKER_METRICS_PORT`` from its main process (the job process writes
    its own to the multiprocess folder that ``saft worker`` set up, and the port sums them)."""
    port = get_settings().worker_metrics_port
    if port:
        from saft_service.metrics import serve_worker_metrics

        serve_worker_metrics(port)


@worker_process_init.connect
def _allow_data_loader_workers(**_: object) -> None:
    """Let the pool process that runs jobs start torch's data-loader workers (``SAFT_DATA_WORKERS``).

    Celery's pool processes are daemonic, and the standard library refuses children to a daemonic process
    ("daemonic processes are not allowed to have children"). The rule is there so that children are not left
    behind; torch's loader workers are daemonic themselves and exit when the job's process ends or dies (they
    watch their parent), so clearing the flag for this one process leaves nothing behind.
    """
    multiprocessing.current_process().daemon = False


_webhook_senders: list[WebhookSender] = []


@worker_ready.connect
def _start_webhook_sender(**_: object) -> None:
    """Send the webhook deliveries that are due from the worker's main process (every worker does; leases on the
    rows keep two from sending the same attempt), so they go out for as long as any worker runs."""
    sender = WebhookSender(get_settings())
    sender.start()
    _webhook_senders.append(sender)


@worker_shutdown.connect
def _stop_webhook_sender(**_: object) -> None:
    while _webhook_senders:
        _webhook_senders.pop().stop()
