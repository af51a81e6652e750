"""The rows of a multipart upload on both stores, in-process: a completion in progress keeps beating, one
whose process died goes back to pending, and the part plan grows the part size past the part limit."""

from __future__ import annotations

import secrets

import pytest

from saft_service import db, keys, multipart
from saft_service.reaper import reap_once
from saft_service.settings import Settings
from saft_service.tables import Upload
from tests.fixtures.stack import wait_until

pytestmark = pytest.mark.service


def test_a_completion_beats_while_it_runs_and_a_silent_one_is_pending_again(
    migrated_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = migrated_settings
    with db.session_factory(settings)() as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        upload = multipart.create_upload(s, settings, tenant_id=tenant.id, filename="a.zip", size=10, sha256=None)
        assert multipart.start_completing(s, upload.id)
        first = s.get(Upload, upload.id).updated_at
    monkeypatch.setattr(multipart, "COMPLETING_BEAT_S", 0.05)
    def beaten() -> bool:
        with db.session_factory(settings)() as s:
            row = s.get(Upload, upload.id)
            return row is not None and row.updated_at > first

    with multipart.CompletingBeat(settings, upload.id):
        assert wait_until(beaten, timeout=30, interval=0.05), "the beat never touched the row"
    with db.session_factory(settings)() as s:
        row = s.get(Upload, upload.id)
        assert row is not None and row.status == Upload.COMPLETING and row.updated_at > first
    # A beat this recent keeps it completing; one older than COMPLETING_STALE_S makes it pending.
    reap_once(settings, judge_heartbeats=False)
    with db.session_factory(settings)() as s:
        assert s.get(Upload, upload.id).status == Upload.COMPLETING
    monkeypatch.setattr(multipart, "COMPLETING_STALE_S", 0.0)
    reap_once(settings, judge_heartbeats=False)
    with db.session_factory(settings)() as s:
        assert s.get(Upload, upload.id).status == Upload.PENDING


def test_the_part_plan_keeps_within_the_part_limit() -> None:
    s = Settings(upload_part_bytes=16 << 20, max_upload_parts=100)
    assert multipart.plan_parts(1, s) == (16 << 20, 1)
    assert multipart.plan_parts(100 * (16 << 20), s) == (16 << 20, 100)
    part, parts = multipart.plan_parts(100 * (16 << 20) + 1, s)  # one byte more: larger parts, whole MiB
    assert parts <= 100 and part % (1 << 20) == 0 and part * parts >= 100 * (16 << 20) + 1
