"""The worker's side of training health, in-process on both stores: a loss that overflowed to NaN is neither
written into the job's row while it runs nor stored with its result (JSON cannot hold it: Postgres refuses the
row, the API cannot answer it), and the run's warnings reach the row, its events and the public view."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from api.schemas import JobEventPublic, JobPublic
from saft_core.config import ModelSpec
from saft_core.health import training_warnings
from saft_core.results import FinetuneResult, Progress
from saft_service import db, jobs, keys, outcomes
from saft_service.settings import Settings
from saft_service.storage import Storage
from saft_service.tables import Job, JobEvent
from worker.reporting import JobReporter

pytestmark = pytest.mark.service

NAN = float("nan")


def test_a_nan_loss_is_kept_out_of_the_row_and_the_warnings_are_stored(migrated_settings: Settings) -> None:
    settings = migrated_settings
    with db.session_factory(settings)() as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        job = jobs.create(s, tenant_id=tenant.id, dataset_id=None, spec={"dataset_id": "ds_x"})
        s.commit()
        job_id = job.id
        assert jobs.claim(s, job_id, worker="w1") is not None
        s.commit()
    # 1. progress while the loss is NaN: the step is recorded, the loss is not
    reporter = JobReporter(job_id, settings, attempt=1)
    reporter.on_progress(Progress("training", 9, 9, loss=NAN, lr=10.0))
    with db.session_factory(settings)() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.step == 9 and "train_loss" not in row.metrics
        assert row.metrics["learning_rate"] == 10.0
        json.dumps(JobPublic.of(row).model_dump(mode="json"), allow_nan=False)  # the API can answer it
    # 2. the success: non-finite metrics are dropped, the warnings stored with one event each
    out = Storage(settings).job_dir(job_id) / "attempt-1"
    out.mkdir(parents=True)
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(b"not read here")
    warnings = training_warnings(first_loss=0.3, final_loss=NAN, num_classes=3, learning_rate=10.0)
    assert [w.code for w in warnings] == ["loss_diverged"]
    result = FinetuneResult(
        checkpoint_path=ckpt, mask_path=None, mask=None, evaluations=[], classes=["a", "b", "c"],
        base_sha256="0" * 64, model=ModelSpec("saft-tiny", "world"),
        metrics={"train_loss_first": 0.3, "train_loss_last": NAN, "train_loss_last_epoch": NAN, "k": 9.0},
        warnings=warnings,
    )
    with db.session_scope(settings) as s:
        assert outcomes.record_success(s, job_id, result, attempt=1, training_steps=9, settings=settings)
    with db.session_factory(settings)() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.status == "succeeded"
        assert row.metrics == {"train_loss_first": 0.3, "k": 9.0}
        public = JobPublic.of(row).model_dump(mode="json")
        json.dumps(public, allow_nan=False)
        assert [w["code"] for w in public["warnings"]] == ["loss_diverged"]
        assert "not a finite number" in public["warnings"][0]["message"]
        events = [JobEventPublic.of(e) for e in s.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)]
        warned = [e for e in events if e.kind == "warning"]
        assert len(warned) == 1 and warned[0].level == "warning"
        assert warned[0].data == {"code": "loss_diverged", "hint": warnings[0].hint, "first_loss": 0.3,
                                  "final_loss": None}
        assert events[-1].kind == "status" and events[-1].data == {"status": "succeeded"}
    assert Path(ckpt).is_file()
