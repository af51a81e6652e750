"""The Celery application both sides share: the API sends job ids, the worker runs them.

Messages carry only a job id; the job row is the truth. Delivery settings (why each):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job whose worker process dies goes back to the queue
  (``saft_service.jobs.claim`` then restarts it, at most ``max_attempts`` times).
- ``worker_prefetch_multiplier=1``, concurrency 1: a worker holds one job at a time (one process per GPU).
- Redis ``visibility_timeout`` longer than the longest job, so a long job is never handed out twice.
- Embedded default: kombu's SQLAlchemy transport on a SQLite file (transactional, works across processes
  and needs no server). It has no fanout, so remote control, gossip and mingle are off there.
"""

from __future__ import annotations

import base64
import json
import logging
from functools import lru_cache

from celery import Celery

from .settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "saft.run_job"


class QueueUnavailable(Exception):
    """The broker could not take the message."""


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (no tasks registered: the worker adds them)."""
    if settings.embedded_broker:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        transport_options: dict[str, object] = {"connect_args": {"timeout": 30}}
    else:
        transport_options = {"visibility_timeout": settings.visibility_timeout}
    app = Celery("saft", broker=settings.celery_broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives a broker outage: reconnect for ever
        broker_connection_timeout=5,
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_soft_time_limit=settings.job_time_limit,
        task_time_limit=settings.job_time_limit + 120,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not settings.embedded_broker,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=1)
def _producer_app() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Send ``job_id`` to the workers. Raises ``QueueUnavailable`` when the broker does not take it."""
    settings = settings or get_settings()
    app = _producer_app() if settings is get_settings() else make_celery(settings)
    try:
        app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=settings.queue_name,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
        )
    except Exception as e:  # kombu raises transport-specific errors; all mean the same here
        log.exception("could not enqueue job %s", job_id)
        raise QueueUnavailable(str(e)) from e


def ping_broker(settings: Settings | None = None, timeout: int = 2) -> None:
    """Raise if the broker cannot be reached."""
    settings = settings or get_settings()
    app = _producer_app() if settings is get_settings() else make_celery(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


# kombu's Redis transport keeps a queue's waiting messages in a list named after the queue (one more list per
# priority step, named queue + SEP + step), delivered-but-unacked ones in a hash; the SQLAlchemy transport in
# rows with visible = true. Only the waiting ones count as "held": an unacked message belongs to a worker, and
# if that worker is gone the job's heartbeat says so.
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)


def job_id_of(payload: str | bytes) -> str | None:
    """The job id a kombu message (JSON, with a base64 or plain body of Celery's protocol 2) carries."""
    try:
        msg = json.loads(payload)
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def pending_job_ids(settings: Settings) -> set[str] | None:
    """Job ids of the messages waiting in the broker's queue, or None for a broker this cannot inspect.
    Raises when the broker cannot be reached."""
    url = settings.celery_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            keys = [settings.queue_name] + [
                f"{settings.queue_name}{_REDIS_PRIORITY_SEP}{p}" for p in _REDIS_PRIORITY_STEPS
            ]
            payloads = [m for k in keys for m in client.lrange(k, 0, -1)]
        finally:
            client.close()
    elif url.startswith("sqla+"):
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import OperationalError

        engine = create_engine(url.removeprefix("sqla+"))
        try:
            with engine.connect() as conn:
                payloads = list(
                    conn.scalars(
                        text(
                            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                            "WHERE q.name = :name AND m.visible"
                        ),
                        {"name": settings.queue_name},
                    )
                )
        except OperationalError:  # the tables do not exist before the first message
            payloads = []
        finally:
            engine.dispose()
    else:
        return None
    return {job_id for p in payloads if (job_id := job_id_of(p))}
