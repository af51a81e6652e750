"""The service's Prometheus metrics (``prometheus_client``). Every name starts with ``saft_``.

Counted where they happen (in the process that does the work):
- API: ``saft_http_request_duration_seconds{method,route,status}`` (``route`` is the route's template,
  ``/v1/jobs/{job_id}``, never the raw path), ``saft_classify_images_total{kind}``,
  ``saft_classify_duration_seconds{kind}``, ``saft_upload_bytes_total{route}``,
  ``saft_reaper_actions_total{action}`` (requeued, failed, cancelled, resent), ``saft_api_processes``.
- Worker (observed in the process that runs the job): ``saft_job_duration_seconds{status}`` (one attempt,
  claim to end), ``saft_job_stage_duration_seconds{stage}`` (each completed stage),
  ``saft_job_attempts_total{kind}`` (first, retry).

Read from the store at scrape time by the API's ``/metrics`` (so they are right whichever process changed the
rows): ``saft_jobs{status}``, ``saft_queue_depth``, ``saft_oldest_queued_job_age_seconds``,
``saft_broker_queued_jobs``, ``saft_tenant_storage_bytes{tenant}`` (the ``SAFT_METRICS_MAX_TENANTS``
largest by name, the rest summed as ``_other``) and ``saft_store_up``.

Several processes behind one endpoint write to ``PROMETHEUS_MULTIPROC_DIR`` (see ``metrics_dir``), and the
endpoint sums them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics_dir import multiprocess_mode

if TYPE_CHECKING:
    from .reaper import ReapReport
    from .settings import Settings

log = logging.getLogger(__name__)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CLASSIFY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
OTHER_TENANTS = "_other"

# --- API --------------------------------------------------------------------------------------------------
HTTP_REQUEST_SECONDS = Histogram(
    "saft_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method, route template and status.",
    ["method", "route", "status"],
    buckets=HTTP_BUCKETS,
)
CLASSIFY_IMAGES = Counter(
    "saft_classify_images", "Images classified, by kind (zero_shot, fine_tuned).", ["kind"]
)
CLASSIFY_SECONDS = Histogram(
    "saft_classify_duration_seconds",
    "Time a classify request spends decoding and classifying its images, by kind.",
    ["kind"],
    buckets=CLASSIFY_BUCKETS,
)
UPLOAD_BYTES = Counter(
    "saft_upload_bytes", "Bytes of request bodies received by the upload routes, by route template.", ["route"]
)
REAPER_ACTIONS = Counter(
    "saft_reaper_actions",
    "Jobs the reaper acted on: requeued (lost worker), failed (too many attempts), cancelled, resent "
    "(message lost by the broker).",
    ["action"],
)
API_PROCESSES = Gauge(
    "saft_api_processes", "API processes serving (summed over the live ones).", multiprocess_mode="livesum"
)

# --- worker -----------------------------------------------------------------------------------------------
JOB_SECONDS = Histogram(
    "saft_job_duration_seconds",
    "Run time of one attempt of a job, from its claim to its end, by the job's status after it.",
    ["status"],
    buckets=JOB_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "saft_job_stage_duration_seconds", "Time of each completed stage of a job.", ["stage"], buckets=JOB_BUCKETS
)
JOB_ATTEMPTS = Counter(
    "saft_job_attempts", "Attempts started (a job claimed by a worker): first or retry.", ["kind"]
)


def count_reaper(report: ReapReport) -> None:
    """Add one reaper pass's actions."""
    for action in ("requeued", "failed", "cancelled", "resent"):
        n = len(getattr(report, action))
        if n:
            REAPER_ACTIONS.labels(action).inc(n)


# --- scraping ---------------------------------------------------------------------------------------------


class _Forward(Collector):
    """The process's default registry, inside another registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()

    def describe(self) -> Iterable[Metric]:
        return []


def scrape_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of this process's metrics (all processes' in multiprocess mode) plus ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    for collector in collectors:
        registry.register(collector)
    return registry


def mark_process_dead(pid: int) -> None:
    """A process of a multiprocess group ends: its live gauges stop counting."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)


class StoreCollector(Collector):
    """Metrics read from the store (and the broker) at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        try:
            metrics = list(self._from_store())
        except Exception as e:  # the database is down: the rest of the scrape still answers
            log.warning("metrics: cannot read the store (%s)", type(e).__name__)
            metrics = []
        up = GaugeMetricFamily("saft_store_up", "Whether this scrape could read the store (1) or not (0).")
        up.add_metric([], 1.0 if metrics else 0.0)
        yield up
        yield from metrics
        broker = self._broker_messages()
        if broker is not None:
            yield GaugeMetricFamily(
                "saft_broker_queued_jobs", "Jobs whose message waits in the broker's queue (unclaimed).", value=broker
            )

    def _from_store(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from .db import session_scope
        from .jobs import JobStatus
        from .tables import Job, Tenant, utcnow
        from .usage import storage_by_tenant

        with session_scope(self.settings) as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            oldest = s.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED.value))
            by_tenant = storage_by_tenant(s)
            names = dict(s.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(list(by_tenant)))).all())
            now = utcnow()
        jobs = GaugeMetricFamily("saft_jobs", "Jobs in the store, by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], float(counts.get(status.value, 0)))
        yield jobs
        yield GaugeMetricFamily(
            "saft_queue_depth", "Jobs waiting for a worker (queued in the store).",
            value=float(counts.get(JobStatus.QUEUED.value, 0)),
        )
        yield GaugeMetricFamily(
            "saft_oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none queued).",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        storage = GaugeMetricFamily(
            "saft_tenant_storage_bytes",
            f"Bytes a tenant stores (datasets, uploads in flight, job outputs); the largest by name, the rest as "
            f"tenant={OTHER_TENANTS!r}.",
            labels=["tenant"],
        )
        ranked = sorted(by_tenant.items(), key=lambda kv: (-kv[1], kv[0]))
        shown, rest = ranked[: self.settings.metrics_max_tenants], ranked[self.settings.metrics_max_tenants :]
        for tenant_id, size in shown:
            storage.add_metric([names.get(tenant_id, tenant_id)], float(size))
        if rest:
            storage.add_metric([OTHER_TENANTS], float(sum(size for _, size in rest)))
        yield storage

    def _broker_messages(self) -> float | None:
        from .queue import pending_job_ids

        try:
            pending = pending_job_ids(self.settings)
        except Exception as e:  # the broker is down
            log.warning("metrics: cannot inspect the broker (%s)", type(e).__name__)
            return None
        return None if pending is None else float(len(pending))


def serve_worker_metrics(port: int) -> bool:
    """Serve this worker's metrics (its job processes' too, in multiprocess mode) on ``port`` in a thread.
    False (logged) when the port cannot be had: the worker runs on without it."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, registry=scrape_registry())
    except OSError as e:
        log.error("cannot serve metrics on port %s (SAFT_WORKER_METRICS_PORT): %s", port, e)
        return False
    log.info("metrics on http://0.0.0.0:%s/metrics", port)
    return True
