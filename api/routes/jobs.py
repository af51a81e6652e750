"""Jobs: create, list, read, cancel, delete; their events (list and Server-Sent Events), mask, checkpoint, evaluations."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse

from saft_service import jobs
from saft_service.db import session_factory
from saft_service.dispatch import dispatch_soon
from saft_service.input_checks import MAX_INT64
from saft_service.storage import remove_tree
from saft_service.submission import QuotaExceeded, SubmissionRefused, submit_job
from saft_service.tables import Dataset, Evaluation, Job, JobEvent, Mask

from ..deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, TenantJob, TenantJobBriefly
from ..event_stream import KEEPALIVE_S, event_watch, job_event_stream
from ..idempotent_route import IDEMPOTENCY_RESPONSES, IDEMPOTENT, IdempotentAnswer, IdempotentRoute
from ..pagination import newest_first_page
from ..problems import AUTH_RESPONSES, CONFLICT, INVALID, NOT_FOUND, TOO_MANY, UNAVAILABLE, ProblemError
from ..schemas import (
    EvaluationPublic,
    EvaluationsPublic,
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobPublic,
    JobsPublic,
    MaskPublic,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_RESPONSES, route_class=IdempotentRoute)

SAFETENSORS = "application/octet-stream"


@router.post(
    "",
    response_model=JobPublic,
    status_code=201,
    responses={**INVALID, **TOO_MANY, **UNAVAILABLE, **IDEMPOTENCY_RESPONSES},
    summary="Start a fine-tuning job",
    dependencies=[IDEMPOTENT],
)
def create_job(
    body: JobCreate, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep, answer: IdempotentAnswer
) -> JobPublic:
    """Queue a job. Poll `GET /v1/jobs/{id}` or stream `GET /v1/jobs/{id}/events/stream` to follow it.

    The job is stored before it is sent to the queue: if the queue is down it stays `queued` (an event says so)
    and is sent when the queue is back. Past the tenant's quota of active jobs: 429 with `Retry-After`."""
    try:
        job = submit_job(
            session, settings, tenant=tenant, spec=body, also=lambda s, j: answer(s, 201, JobPublic.of(j))
        )
    except QuotaExceeded as e:
        raise ProblemError(429, e.code, e.message, headers={"Retry-After": "30"}) from e
    except SubmissionRefused as e:
        raise ProblemError(422, e.code, e.message) from e
    return JobPublic.of(job)


@router.get("", response_model=JobsPublic, summary="List jobs, newest first")
def list_jobs(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
    status: Annotated[jobs.JobStatus | None, Query(description="Only jobs with this status.")] = None,
) -> JobsPublic:
    stmt = select(Job).where(Job.tenant_id == tenant.id)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    rows, next_cursor = newest_first_page(session, stmt, Job, limit=limit, cursor=cursor)
    return JobsPublic(data=[JobPublic.of(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND, summary="Get a job")
def get_job(job: TenantJob) -> JobPublic:
    return JobPublic.of(job)


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses={**NOT_FOUND, **CONFLICT}, summary="Cancel a job"
)
def cancel_job(job: TenantJob, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops at its next step (status stays `running` with
    `cancel_requested: true` until then); a running one whose worker stopped sending heartbeats is cancelled
    at once. A finished job answers 409 job_finished."""
    try:
        jobs.request_cancel(session, job, heartbeat_timeout=settings.heartbeat_timeout)
    except jobs.IllegalTransition as e:
        session.rollback()
        raise ProblemError(409, "job_finished", f"job {job.id} already {e.status}; nothing to cancel") from e
    session.commit()
    session.refresh(job)
    if job.status == jobs.JobStatus.CANCELLED and job.started_at is None:
        dispatch_soon(settings)  # it may have held a place in the broker's window
    return JobPublic.of(job)


@router.delete(
    "/{job_id}", status_code=204, responses={**NOT_FOUND, **CONFLICT}, summary="Delete a finished job and its files"
)
def delete_job(job: TenantJob, session: SessionDep, storage: StorageDep) -> Response:
    """Removes the job, its events, mask, evaluations and checkpoint files. A queued or running job answers
    409 job_active: cancel it first and delete it once it has stopped."""
    if not jobs.is_terminal(job.status):
        raise ProblemError(409, "job_active", f"job {job.id} is {job.status}; cancel it first, then delete it")
    session.delete(job)
    session.commit()
    job_dir = storage.job_dir(job.id)
    remove_tree(job_dir)
    if job_dir.exists():
        log.warning("deleted job %s, but could not remove all of %s; remove it by hand", job.id, job_dir)
    else:
        log.info("deleted job %s", job.id)
    return Response(status_code=204)


def _events_after(session: Session, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]:
    stmt = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


@router.get(
    "/{job_id}/events", response_model=JobEventsPublic, responses=NOT_FOUND, summary="List a job's events"
)
def list_events(
    job: TenantJob,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> JobEventsPublic:
    return JobEventsPublic(data=[JobEventPublic.of(e) for e in _events_after(session, job.id, after, limit)])


@router.get(
    "/{job_id}/events/stream",
    responses={
        **NOT_FOUND,
        200: {
            "description": "`text/event-stream` of JobEventPublic (event: the kind); "
            "ends with `event: end` when the job has finished.",
            "content": {"text/event-stream": {}},
        },
    },
    summary="Stream a job's events (Server-Sent Events)",
)
async def stream_events(
    request: Request,
    job: TenantJobBriefly,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="Start after this event id.")] = 0,
    last_event_id: Annotated[
        int | None, Header(ge=0, le=MAX_INT64, description="Resume after this id (set by EventSource).")
    ] = None,
) -> EventSourceResponse:
    """The stream holds no database connection while it waits, so many can be open at once."""
    watch = event_watch(request.app.state, session_factory(settings), settings.event_poll_interval)
    start = max(after, last_event_id or 0)
    return EventSourceResponse(job_event_stream(watch, job.id, start), ping=int(KEEPALIVE_S))


@router.get(
    "/{job_id}/mask", response_model=MaskPublic, responses={**NOT_FOUND}, summary="The SAFT mask summary"
)
def get_mask(job: TenantJob, session: SessionDep) -> MaskPublic:
    """Ratio, k and per-tensor counts of the selected entries (404 mask_not_available until the job succeeded,
    and for full fine-tuning, which has no mask)."""
    mask = session.get(Mask, job.id)
    if mask is None:
        raise ProblemError(404, "mask_not_available", _not_available(job, "mask"))
    return MaskPublic.of(mask)


@router.get(
    "/{job_id}/mask/file",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {SAFETENSORS: {}}, "description": "The mask (safetensors)."}},
    summary="Download the mask file",
)
def download_mask(job: TenantJob, session: SessionDep, storage: StorageDep) -> FileResponse:
    mask = session.get(Mask, job.id)
    if mask is None or mask.path is None:
        raise ProblemError(404, "mask_not_available", _not_available(job, "mask"))
    return _file(storage.absolute(mask.path), f"{job.id}-mask.safetensors", mask.sha256 or "")


@router.get(
    "/{job_id}/checkpoint",
    response_class=FileResponse,
    responses={
        **NOT_FOUND,
        200: {
            "content": {SAFETENSORS: {}},
            "description": "The sparse delta (safetensors). Its SHA-256 is in the `X-Checksum-SHA256` header, "
            "in `Repr-Digest` and in the job's `checkpoint.sha256`.",
        },
    },
    summary="Download the sparse checkpoint",
)
def download_checkpoint(job: TenantJob, storage: StorageDep) -> FileResponse:
    ckpt = job.checkpoint
    if ckpt is None:
        raise ProblemError(404, "checkpoint_not_available", _not_available(job, "checkpoint"))
    return _file(storage.absolute(ckpt.path), f"{job.id}.safetensors", ckpt.sha256)


@router.get(
    "/{job_id}/evaluations",
    response_model=EvaluationsPublic,
    responses=NOT_FOUND,
    summary="Accuracy along alpha, from zero-shot to fine-tuned",
)
def list_evaluations(job: TenantJob, session: SessionDep) -> EvaluationsPublic:
    """Top-1/top-5 on the validation split ('validation') and on each eval dataset (by id) at each alpha of a
    fixed grid from 0 (the zero-shot baseline) to 1 (the fine-tuned model), and the alpha the job recommends.
    Empty until the job succeeded."""
    rows = list(
        session.scalars(select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.alpha, Evaluation.id))
    )
    names = {
        d.id: d.name
        for d in session.scalars(select(Dataset).where(Dataset.id.in_({r.dataset for r in rows})))
    }
    ckpt = job.checkpoint
    return EvaluationsPublic(
        data=[EvaluationPublic.of(r, names.get(r.dataset, r.dataset)) for r in rows],
        recommended_alpha=ckpt.recommended_alpha if ckpt else None,
        alpha_rule=ckpt.alpha_rule if ckpt else None,
    )


def _not_available(job: Job, what: str) -> str:
    if job.status == jobs.JobStatus.SUCCEEDED:
        return f"job {job.id} has no {what} (full fine-tuning writes no mask)"
    return f"job {job.id} is {job.status}; its {what} exists once it has succeeded"


def _file(path: Path, filename: str, sha256: str) -> FileResponse:
    if not path.is_file():
        raise ProblemError(410, "artifact_missing", f"{filename} is gone from the artifact store")
    digest = base64.b64encode(bytes.fromhex(sha256)).decode() if sha256 else ""
    headers = {"X-Checksum-SHA256": sha256, "ETag": f'"{sha256}"'}
    if digest:
        headers["Repr-Digest"] = f"sha-256=:{digest}:"
    return FileResponse(path, media_type=SAFETENSORS, filename=filename, headers=headers)
