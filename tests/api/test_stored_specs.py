"""Validate on write, trust on read: a job stored under another version's ranges keeps working.

The jobs here are written straight into the store, as an older version of the service (with wider ranges, and
a field since dropped) would have written them, then sent to the real worker. Listing, reading and classifying
with such a job never validate it again. The API's ranges and the core's come from one declaration, so a value
outside today's ranges is one the core refuses too: the worker fails such a job with ``invalid_config`` (the
core is the last word on what can run), while a job that ran before the ranges tightened stays readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saft_service import db, jobs
from saft_service.dispatch import dispatch
from saft_service.jobspec import JobSpec
from saft_service.settings import Settings
from saft_service.tables import Dataset, Job, JobDataset
from tests.fixtures.stack import Stack, wait_for_job, zip_dir

pytestmark = pytest.mark.service


def settings_of(stack: Stack) -> Settings:
    """The service's own settings (database, broker, queue), read from the environment it runs with."""
    return Settings(**{k.removeprefix("SAFT_").lower(): v for k, v in stack.env.items() if k.startswith("SAFT_")})


def store_old_job(settings: Settings, dataset_id: str, spec: dict[str, Any]) -> str:
    """Write a job row (and its dataset rows) the way an older version did, without today's validation (and
    without a queue, as jobs stored before dispatch were); the dispatcher sends it to the workers."""
    with db.session_factory(settings)() as s:
        ds = s.get(Dataset, dataset_id)
        assert ds is not None
        job = jobs.create(s, tenant_id=ds.tenant_id, dataset_id=dataset_id, spec=spec)
        s.add(JobDataset(job_id=job.id, dataset_id=dataset_id, role=JobDataset.TRAIN))
        s.commit()
    dispatch(settings)  # now, or after the job ahead of it in the window starts
    return job.id


def old_spec(dataset_id: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "model": "saft-tiny",
        "pretrained": "default",
        "method": {"type": "saft", "ratio": 0.01},
        # the scoring batch where it was before it became the SAFT method's (saft_service.jobspec.upgrade_spec)
        "hyperparameters": {"epochs": 1, "seed": 0, "scoring_batch_size": 8, **hyperparameters},
        "validation_fraction": 0.0,
        "templates": ["a photo of a {}."],
        "metadata": {"stored_by": "an older version"},
        "gpu_class": "a100",  # a field that version had and this one does not
    }


def test_a_job_outside_todays_ranges_lists_reads_runs_and_classifies(stack: Stack, shapes_dir: Path) -> None:
    settings = settings_of(stack)
    # Values today's API refuses, stored before the ranges tightened.
    wide = {"batch_size": 10_000, "weight_decay": 20.0}
    for name, value in wide.items():
        with pytest.raises(ValueError, match=name):
            JobSpec.model_validate({"dataset_id": "ds_x", "hyperparameters": {name: value}})
    with stack.client() as c:
        ds = c.post("/v1/datasets", data={"name": "old"}, files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
        # an old spec (a field since dropped, fields added since missing) runs on today's worker
        job_id = store_old_job(settings, ds["id"], old_spec(ds["id"]))
        job = wait_for_job(c, job_id, until={"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", f"{job['error']}\n{stack.logs()}"
        # then the ranges tighten: the stored values are outside today's
        with db.session_factory(settings)() as s:
            row = s.get(Job, job_id)
            row.spec = {**row.spec, "hyperparameters": {**row.spec["hyperparameters"], **wide}}
            s.commit()
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["hyperparameters"]["batch_size"] == 10_000
        assert job["hyperparameters"]["weight_decay"] == 20.0
        assert job["hyperparameters"]["warmup_steps"] == 0  # a field the old spec lacks: today's default
        assert job["method"]["scoring_batch_size"] == 8 and "scoring_batch_size" not in job["hyperparameters"]
        assert "gpu_class" not in job and job["priority"] == "normal" and job["metadata"] == {"stored_by": "an older version"}
        r = c.get("/v1/jobs", params={"limit": 100})
        assert r.status_code == 200, r.text
        assert job_id in [j["id"] for j in r.json()["data"]]

        png = (shapes_dir / "red_circle" / "0000.png").read_bytes()
        r = c.post("/v1/classify", data={"job_id": job_id}, files=[("images", ("a.png", png, "image/png"))])
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == ["blue square", "green triangle", "red circle"]
    # The checkpoint row holds the base as the core resolved it ("default" is saft-tiny's "world" weights).
    with db.get_engine(settings).connect() as conn:
        row = conn.execute(text("SELECT base_model, pretrained FROM checkpoints WHERE job_id = :j"), {"j": job_id})
        assert tuple(row.one()) == ("saft-tiny", "world")


def test_a_stored_value_the_core_refuses_fails_the_job_with_invalid_config(stack: Stack, shapes_dir: Path) -> None:
    settings = settings_of(stack)
    with stack.client() as c:
        ds = c.post("/v1/datasets", data={"name": "old"}, files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
        spec = old_spec(ds["id"])
        spec["method"]["ratio"] = 0.0  # below the core's own range: no version of this core runs it
        job_id = store_old_job(settings, ds["id"], spec)

        job = wait_for_job(c, job_id, until={"succeeded", "failed", "cancelled"})
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "invalid_config"
        assert "ratio must be in (0, 1)" in job["error"]["message"]
        assert job["method"]["ratio"] == 0.0  # still readable, as stored
        assert c.delete(f"/v1/datasets/{ds['id']}").status_code == 204  # a failed job holds nothing
