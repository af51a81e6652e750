"""Webhooks: register an endpoint (its signing secret is shown once), list, delete, rotate the secret; the
deliveries to an endpoint with every attempt. Sending is the workers' (``saft_service.webhooks``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from saft_service import webhooks
from saft_service.input_checks import ID_PATTERN
from saft_service.tables import Tenant, WebhookDelivery, WebhookEndpoint, utcnow

from ..deps import CurrentTenant, SessionDep, SettingsDep
from ..pagination import newest_first_page
from ..problems import AUTH_RESPONSES, CONFLICT, INVALID, NOT_FOUND, ProblemError

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=AUTH_RESPONSES)

EVENTS_HELP = "Events to send: " + ", ".join(f"`{t}`" for t in webhooks.EVENT_TYPES) + " (default: all)."


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=webhooks.MAX_URL_CHARS, pattern=r"^[^\x00-\x20\x7f]+$",
        description="An http(s) URL on a public address (no spaces or control characters); it gets a signed POST "
        "for each event.",
    )
    events: list[str] = Field(
        default_factory=lambda: list(webhooks.EVENT_TYPES), min_length=1, max_length=50, description=EVENTS_HELP
    )

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in webhooks.EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}; the events are {', '.join(webhooks.EVENT_TYPES)}")
        return list(dict.fromkeys(value))


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime

    @classmethod
    def of(cls, e: WebhookEndpoint) -> WebhookPublic:
        return cls(id=e.id, url=e.url, events=list(e.events), created_at=e.created_at)


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="The signing secret (`whsec_` + base64), shown only now. Verify each delivery with it "
        "(Standard Webhooks; `saft_client.webhooks.verify`)."
    )


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class WebhookSecret(BaseModel):
    id: str
    secret: str = Field(description="The new signing secret, shown only now.")
    previous_valid_until: datetime = Field(
        description="Until then each delivery is also signed with the previous secret (a second `v1,` signature)."
    )


class WebhookAttemptPublic(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None = Field(description="What the receiver answered; null when nothing came back.")
    error: str | None = Field(description="Why the attempt failed when it was not a status code.")


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="The `webhook-id` header of every attempt of this delivery.")
    event_type: str
    job_id: str | None
    status: Literal["pending", "delivered", "failed"] = Field(description="pending (retried at `next_attempt_at`), delivered or failed (retries ended).")
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict[str, Any] = Field(description="The JSON body sent on every attempt.")
    attempts: list[WebhookAttemptPublic]

    @classmethod
    def of(cls, d: WebhookDelivery) -> WebhookDeliveryPublic:
        return cls(
            id=d.id, event_type=d.event_type, job_id=d.job_id, status=d.status,
            next_attempt_at=d.next_attempt_at if d.status == WebhookDelivery.PENDING else None,
            created_at=d.created_at, finished_at=d.finished_at, payload=json.loads(d.payload),
            attempts=[
                WebhookAttemptPublic(
                    number=a.number, started_at=a.started_at, duration_ms=a.duration_ms,
                    status_code=a.status_code, error=a.error,
                )
                for a in d.attempt_rows
            ],
        )


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


def _tenant_endpoint(session: Session, tenant: Tenant, webhook_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, webhook_id)
    if endpoint is None or endpoint.tenant_id != tenant.id:
        raise ProblemError(404, "webhook_not_found", f"no webhook {webhook_id} in this tenant")
    return endpoint


WebhookId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]


@router.post(
    "", response_model=WebhookCreated, status_code=201, responses={**INVALID, **CONFLICT},
    summary="Register a webhook endpoint",
)
def create_webhook(
    body: WebhookCreate, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep
) -> WebhookCreated:
    """The answer holds the signing secret, shown this once. A URL whose host resolves to a loopback, private,
    link-local or metadata address answers 422 `webhook_url_not_allowed` (checked again before every delivery)."""
    try:
        webhooks.check_url(body.url, settings)
    except webhooks.UrlRefused as e:
        raise ProblemError(422, e.code, e.message) from e
    count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant.id)) or 0
    if count >= settings.max_webhooks:
        raise ProblemError(
            409, "webhook_limit_reached",
            f"this tenant has {count} webhooks, the most allowed (SAFT_MAX_WEBHOOKS); delete one first",
        )
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id, url=body.url, events=body.events, secret=webhooks.new_secret(), created_at=utcnow()
    )
    session.add(endpoint)
    session.commit()
    return WebhookCreated(**WebhookPublic.of(endpoint).model_dump(), secret=endpoint.secret)


@router.get("", response_model=WebhooksPublic, summary="List webhook endpoints, newest first")
def list_webhooks(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> WebhooksPublic:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.id)
    rows, next_cursor = newest_first_page(session, stmt, WebhookEndpoint, limit=limit, cursor=cursor)
    return WebhooksPublic(data=[WebhookPublic.of(e) for e in rows], next_cursor=next_cursor)


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=NOT_FOUND, summary="Get a webhook endpoint")
def get_webhook(webhook_id: WebhookId, tenant: CurrentTenant, session: SessionDep) -> WebhookPublic:
    return WebhookPublic.of(_tenant_endpoint(session, tenant, webhook_id))


@router.delete(
    "/{webhook_id}", status_code=204, responses=NOT_FOUND, summary="Delete a webhook endpoint and its deliveries"
)
def delete_webhook(webhook_id: WebhookId, tenant: CurrentTenant, session: SessionDep) -> Response:
    session.delete(_tenant_endpoint(session, tenant, webhook_id))
    session.commit()
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret", response_model=WebhookSecret, responses=NOT_FOUND,
    summary="Replace the signing secret",
)
def rotate_secret(webhook_id: WebhookId, tenant: CurrentTenant, session: SessionDep) -> WebhookSecret:
    """A new secret, shown this once. For a day, deliveries carry a signature by the previous secret too, so a
    receiver can switch to the new one without dropping a delivery."""
    endpoint = _tenant_endpoint(session, tenant, webhook_id)
    until = utcnow() + webhooks.PREVIOUS_SECRET_GRACE
    endpoint.previous_secret, endpoint.previous_until = endpoint.secret, until
    endpoint.secret = webhooks.new_secret()
    session.commit()
    return WebhookSecret(id=endpoint.id, secret=endpoint.secret, previous_valid_until=until)


@router.get(
    "/{webhook_id}/deliveries", response_model=WebhookDeliveriesPublic, responses=NOT_FOUND,
    summary="List deliveries to an endpoint, newest first, with their attempts",
)
def list_deliveries(
    webhook_id: WebhookId,
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> WebhookDeliveriesPublic:
    endpoint = _tenant_endpoint(session, tenant, webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    rows, next_cursor = newest_first_page(session, stmt, WebhookDelivery, limit=limit, cursor=cursor)
    return WebhookDeliveriesPublic(data=[WebhookDeliveryPublic.of(d) for d in rows], next_cursor=next_cursor)
