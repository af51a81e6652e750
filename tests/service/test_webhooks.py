"""Webhook deliveries in the store, on SQLite and on Postgres: written with a job's final transition, sent by
the leased sender to a real HTTP receiver, signed, retried with the same id, refused at private addresses."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from saft_service import db, jobs, keys, webhooks
from saft_service.settings import Settings
from saft_service.tables import WebhookDelivery, WebhookEndpoint, utcnow
from tests.fixtures.receiver import receiver, signed_by
from tests.fixtures.stack import scratch_postgres, wait_until

pytestmark = pytest.mark.service


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A migrated store of each kind, shared by this module's tests (each makes its own tenant). The sender may
    reach 127.0.0.1 (the receivers) and retries at once."""
    with contextlib.ExitStack() as stack:
        data_dir: Path = tmp_path_factory.mktemp("webhooks")
        url = stack.enter_context(scratch_postgres("saft_wh")) if request.param == "postgres" else None
        s = Settings(data_dir=data_dir, database_url=url, webhook_allow_private=True, webhook_retry_base=0.05,
                     webhook_timeout=5)
        stack.callback(lambda: db.get_engine(s).dispose())
        db.upgrade(s)
        yield s


@pytest.fixture(autouse=True)
def no_endpoints_left(settings: Settings) -> Iterator[None]:
    """Each test starts with no deliveries due: the ones a test leaves go with its endpoints."""
    yield
    with db.session_scope(settings) as session:
        session.execute(delete(WebhookEndpoint))


def attempts_of(settings: Settings, endpoint_id: str) -> int:
    return sum(d.attempts for d in deliveries(settings, endpoint_id))


def tenant_with_endpoint(settings: Settings, url: str, events: list[str] | None = None) -> tuple[str, WebhookEndpoint]:
    with db.session_scope(settings) as session:
        tenant = keys.get_or_create_tenant(session, f"t-{secrets.token_hex(3)}")
        endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url, events=events or list(webhooks.EVENT_TYPES),
                                   secret=webhooks.new_secret())
        session.add(endpoint)
        session.flush()
        return tenant.id, endpoint


def failed_job(settings: Settings, tenant_id: str) -> str:
    with db.session_scope(settings) as session:
        job = jobs.create(session, tenant_id=tenant_id, dataset_id=None, spec={"dataset_id": "ds_x"})
        session.flush()
        assert jobs.fail(session, job.id, "bad_data", "the data is bad")
        return job.id


def deliveries(settings: Settings, endpoint_id: str) -> list[WebhookDelivery]:
    with db.session_scope(settings) as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)))


def test_a_final_transition_writes_its_deliveries_in_its_own_transaction(settings: Settings) -> None:
    tenant_id, on_fail = tenant_with_endpoint(settings, "http://127.0.0.1:9/a", ["job.failed"])
    with db.session_scope(settings) as session:
        on_success = WebhookEndpoint(tenant_id=tenant_id, url="http://127.0.0.1:9/b", events=["job.succeeded"],
                                     secret=webhooks.new_secret())
        session.add(on_success)
    _, other_tenant = tenant_with_endpoint(settings, "http://127.0.0.1:9/c")
    with db.session_factory(settings)() as session:  # a transition that rolls back leaves no delivery
        job = jobs.create(session, tenant_id=tenant_id, dataset_id=None, spec={"dataset_id": "ds_x"})
        session.commit()
        assert jobs.fail(session, job.id, "bad_data", "the data is bad")
        session.rollback()
        assert deliveries(settings, on_fail.id) == []
        assert jobs.fail(session, job.id, "bad_data", "the data is bad")
        assert not jobs.fail(session, job.id, "bad_data", "again")  # no second final transition, no second row
        session.commit()
    [row] = deliveries(settings, on_fail.id)
    body = json.loads(row.payload)
    assert (row.event_type, row.job_id, row.status, row.attempts) == ("job.failed", job.id, "pending", 0)
    assert body["type"] == "job.failed" and body["data"]["job_id"] == job.id
    assert body["data"]["error"] == {"code": "bad_data", "message": "the data is bad"}
    assert deliveries(settings, on_success.id) == [] and deliveries(settings, other_tenant.id) == []


def test_a_delivery_is_signed_and_retried_with_the_same_id(settings: Settings) -> None:
    with receiver([500, 200]) as rec:
        tenant_id, endpoint = tenant_with_endpoint(settings, rec.url)
        job_id = failed_job(settings, tenant_id)
        assert webhooks.deliver_one(settings)
        [row] = deliveries(settings, endpoint.id)
        assert (row.status, row.attempts) == ("pending", 1) and row.next_attempt_at > row.created_at
        assert wait_until(lambda: webhooks.deliver_one(settings) and len(rec.for_job(job_id)) == 2, timeout=10)
    first, second = rec.for_job(job_id)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == row.id
    assert first.body == second.body and first.headers["content-type"] == "application/json"
    assert signed_by(endpoint.secret, first) and signed_by(endpoint.secret, second)
    assert not signed_by(webhooks.new_secret(), first)
    [row] = deliveries(settings, endpoint.id)
    assert (row.status, row.attempts) == ("delivered", 2) and row.finished_at is not None
    assert [(a.number, a.status_code, a.error) for a in row.attempt_rows] == [(1, 500, None), (2, 200, None)]


def test_a_lease_keeps_two_senders_apart_and_a_lost_sender_resends_the_same_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver() as rec:
        tenant_id, endpoint = tenant_with_endpoint(settings, rec.url)
        job_id = failed_job(settings, tenant_id)
        [row] = deliveries(settings, endpoint.id)
        with db.session_scope(settings) as session:  # lease every due delivery (other tests' too)
            claimed = []
            while (claim := webhooks.claim_due(session, settings, utcnow())) is not None:
                claimed.append(claim[0])
        assert row.id in claimed
        assert not webhooks.deliver_one(settings)  # nothing left to another sender while the leases hold
        assert rec.requests == []

        def die(*args: object) -> bool:
            raise RuntimeError("the sender died after sending")

        with db.session_scope(settings) as session:  # the leases run out
            session.execute(update(WebhookDelivery).values(lease_until=utcnow() - timedelta(seconds=1)))
        with monkeypatch.context() as m:
            m.setattr(webhooks, "record", die)
            with pytest.raises(RuntimeError):
                while webhooks.deliver_one(settings) and not rec.for_job(job_id):
                    pass
        with db.session_scope(settings) as session:
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id)
                            .values(lease_until=utcnow() - timedelta(seconds=1)))
        assert wait_until(lambda: webhooks.deliver_one(settings) and len(rec.for_job(job_id)) == 2, timeout=10)
    # the receiver answered 2xx twice and got the same webhook-id both times: it can drop the second
    assert [r.headers["webhook-id"] for r in rec.for_job(job_id)] == [row.id, row.id]
    [row] = deliveries(settings, endpoint.id)
    assert (row.status, row.attempts) == ("delivered", 1)


def test_retries_end_after_their_window(settings: Settings) -> None:
    short = settings.model_copy(update={"webhook_retry_for": 0.01})
    with receiver([503]) as rec:
        tenant_id, endpoint = tenant_with_endpoint(settings, rec.url)
        failed_job(settings, tenant_id)
        [pending] = deliveries(settings, endpoint.id)
        assert wait_until(lambda: webhooks.deliver_one(short) and deliveries(settings, endpoint.id)[0].attempts, timeout=10)
    [row] = deliveries(settings, endpoint.id)
    assert (row.id, row.status, [a.status_code for a in row.attempt_rows]) == (pending.id, "failed", [503])


def test_private_addresses_are_refused_again_at_delivery_and_redirects_are_not_followed(settings: Settings) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False})
    with receiver() as target, receiver([302], location=target.url) as redirecting:
        tenant_id, loopback = tenant_with_endpoint(settings, target.url.replace("127.0.0.1", "localhost"))
        failed_job(settings, tenant_id)
        assert wait_until(lambda: webhooks.deliver_one(strict) and attempts_of(settings, loopback.id), timeout=10)
        [row] = deliveries(settings, loopback.id)
        assert row.status == "pending" and target.requests == []  # refused before connecting; retried later
        attempt = row.attempt_rows[0]
        assert attempt.status_code is None and "'localhost' resolves to" in (attempt.error or "")

        tenant_id, redirected = tenant_with_endpoint(settings, redirecting.url)
        job_id = failed_job(settings, tenant_id)
        assert wait_until(lambda: webhooks.deliver_one(settings) and redirecting.for_job(job_id), timeout=10)
        [row] = deliveries(settings, redirected.id)
        attempt = row.attempt_rows[0]
        assert (row.status, attempt.status_code) == ("pending", 302) and "not followed" in (attempt.error or "")
        assert target.for_job(job_id) == []


def test_the_webhook_migration_goes_down_and_up(settings: Settings) -> None:
    import sqlalchemy as sa
    from alembic import command
    from alembic.script import ScriptDirectory

    tables = {"webhook_endpoints", "webhook_deliveries", "webhook_attempts"}
    cfg = db.alembic_config(settings)
    revision = next(r for r in ScriptDirectory.from_config(cfg).walk_revisions() if r.path.endswith("_webhooks.py"))
    tenant_with_endpoint(settings, "http://127.0.0.1:9/x")
    command.downgrade(cfg, revision.down_revision)
    assert not tables & set(sa.inspect(db.get_engine(settings)).get_table_names())
    command.upgrade(cfg, "head")
    assert tables <= set(sa.inspect(db.get_engine(settings)).get_table_names())
    with db.session_scope(settings) as session:
        assert session.scalars(select(WebhookEndpoint)).all() == []


def test_a_silent_receiver_times_out_and_https_is_checked(settings: Settings) -> None:
    import socket

    quick = settings.model_copy(update={"webhook_timeout": 0.3})
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        outcome = webhooks.post(f"http://127.0.0.1:{silent.getsockname()[1]}/", "{}", {}, quick)
    assert outcome.status_code is None and "timed out" in (outcome.error or ""), outcome
    with receiver() as rec:  # TLS to a plain HTTP server: the handshake fails, nothing is sent
        outcome = webhooks.post(rec.url.replace("http://", "https://"), "{}", {}, quick)
    assert outcome.status_code is None and "SSL" in (outcome.error or ""), outcome
    assert rec.requests == []
