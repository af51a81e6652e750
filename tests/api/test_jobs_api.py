"""Job requests the API must refuse, and cancelling queued and running jobs through a real worker."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import Stack, alive, children, wait_for_job, wait_for_training, wait_until, zip_dir

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def dataset_id(pg_stack: Stack, shapes_dir: Path) -> str:
    with pg_stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "for-jobs"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def job_ids(c: httpx.Client) -> list[str]:
    return [j["id"] for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"]]


@pytest.mark.parametrize(
    ("change", "code", "where"),
    [
        ({"method": {"type": "saft", "ratio": 0}}, "validation_error", ["body", "method", "saft", "ratio"]),
        ({"method": {"type": "saft", "ratio": 1.5}}, "validation_error", ["body", "method", "saft", "ratio"]),
        ({"method": {"type": "lora"}}, "validation_error", ["body", "method"]),
        ({"hyperparameters": {"epochs": 0}}, "validation_error", ["body", "hyperparameters", "epochs"]),
        (
            {"hyperparameters": {"learning_rate": -1}},
            "validation_error",
            ["body", "hyperparameters", "learning_rate"],
        ),
        (
            {"hyperparameters": {"batch_size": "many"}},
            "validation_error",
            ["body", "hyperparameters", "batch_size"],
        ),
        (
            {"hyperparameters": {"epochs": 1, "optimizer": "sgd"}},
            "validation_error",
            ["body", "hyperparameters", "optimizer"],
        ),
        ({"validation_fraction": 1.0}, "validation_error", ["body", "validation_fraction"]),
        ({"templates": ["no placeholder"]}, "validation_error", ["body", "templates"]),
        ({"templates": []}, "validation_error", ["body", "templates"]),
        ({"colour": "blue"}, "validation_error", ["body", "colour"]),
        ({"dataset_id": "ds_doesnotexist"}, "dataset_not_found", None),
        ({"eval_dataset_ids": ["ds_doesnotexist"]}, "dataset_not_found", None),
        ({"model": "no-such-model"}, "unknown_model", None),
        ({"pretrained": "no-such-tag"}, "model_not_allowed", ["body"]),
    ],
    ids=[
        "ratio-0",
        "ratio-1.5",
        "method",
        "epochs-0",
        "lr",
        "batch-type",
        "extra-hp",
        "val-frac",
        "template",
        "no-templates",
        "extra-field",
        "dataset",
        "eval-dataset",
        "model",
        "pretrained",
    ],
)
def test_bad_job_requests_are_422_and_create_nothing(
    pg_stack: Stack, dataset_id: str, change: dict, code: str, where: list[str] | None
) -> None:
    body = {"dataset_id": dataset_id, "hyperparameters": {"epochs": 1}, **change}
    with pg_stack.client() as c:
        before = job_ids(c)
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == code and problem["detail"]
        if where is not None:
            assert where in [e["loc"] for e in problem["errors"]], problem["errors"]
        assert job_ids(c) == before


def test_not_json_is_422(pg_stack: Stack) -> None:
    with pg_stack.client() as c:
        r = c.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "validation_error"


def test_cancel_a_queued_and_a_running_job(pg_stack: Stack, dataset_id: str) -> None:
    long_job = {"dataset_id": dataset_id, "hyperparameters": {"epochs": 500, "batch_size": 2}}
    with pg_stack.client() as c:
        running = c.post("/v1/jobs", json=long_job).json()
        wait_for_job(c, running["id"], until={"running"}, timeout=120)
        # The single worker is busy, so a second job waits in the queue; cancelling it is immediate.
        queued = c.post("/v1/jobs", json={**long_job, "hyperparameters": {"epochs": 1}}).json()
        r = c.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        # A dataset in use by a running job cannot be deleted.
        r = c.delete(f"/v1/datasets/{dataset_id}")
        assert r.status_code == 409 and r.json()["code"] == "dataset_in_use"
        # Once it trains, cancel it: it stops at its next step. A running job cannot be deleted.
        wait_for_training(c, running["id"])
        r = c.delete(f"/v1/jobs/{running['id']}")
        assert r.status_code == 409 and r.json()["code"] == "job_active"
        r = c.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        done = wait_for_job(c, running["id"], until={"cancelled", "succeeded", "failed"}, timeout=60)
        assert done["status"] == "cancelled", done
        assert done["progress"]["step"] < done["progress"]["total_steps"]
        messages = [e["message"] for e in c.get(f"/v1/jobs/{running['id']}/events").json()["data"]]
        assert any("cancellation requested" in m for m in messages) and messages[-1] == "job cancelled"
        r = c.get(f"/v1/jobs/{running['id']}/checkpoint")
        assert r.status_code == 404 and r.json()["code"] == "checkpoint_not_available"
        assert not (pg_stack.data_dir / "jobs" / running["id"]).exists()  # partial outputs removed
        r = c.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.status_code == 409 and r.json()["code"] == "job_finished"
        # The queued one never started, even after the worker got to its message.
        again = c.get(f"/v1/jobs/{queued['id']}").json()
        assert again["status"] == "cancelled" and again["started_at"] is None and again["attempts"] == 0
        # Both have stopped, so both can be deleted.
        for job_id in (queued["id"], running["id"]):
            assert c.delete(f"/v1/jobs/{job_id}").status_code == 204
            assert c.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_killed_job_process_is_redelivered_and_the_job_restarts(pg_stack: Stack, dataset_id: str) -> None:
    """acks_late + reject_on_worker_lost: the message goes back to Redis and the job row restarts it."""
    worker = next(p for p in pg_stack.procs if p.name == "worker")
    with pg_stack.client() as c:
        job = c.post(
            "/v1/jobs", json={"dataset_id": dataset_id, "hyperparameters": {"epochs": 3, "batch_size": 2}}
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        wait_for_training(c, job_id)
        pids = children(worker.popen.pid)
        assert len(pids) == 1, pids  # concurrency 1: one pool process runs the job

        def two_live_loaders() -> list[int] | None:
            # a loader of an epoch that just ended may still be listed as a zombie: take both alive, in one look
            kids = children(pids[0])
            return kids if len(kids) == 2 and all(alive(p) for p in kids) else None

        # the job's 2 data-loader workers (SAFT_DATA_WORKERS=2), as they are the moment before the kill
        loaders = wait_until(two_live_loaders, timeout=20)
        assert loaders, "the job's data-loader workers never showed up"
        os.kill(pids[0], signal.SIGKILL)
        # the loader workers notice their parent is gone and exit: nothing is left behind
        assert wait_until(lambda: not any(alive(p) for p in loaders), timeout=30), [alive(p) for p in loaders]
        done = wait_for_job(c, job_id, until={"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", f"{done}\n{pg_stack.logs()}"
        assert done["attempts"] == 2
        messages = [e["message"] for e in c.get(f"/v1/jobs/{job_id}/events").json()["data"]]
        assert any("restarted after its worker" in m for m in messages)
        assert worker.popen.poll() is None  # the worker itself lives on


def test_a_job_that_cannot_run_fails_with_an_actionable_error(pg_stack: Stack, dataset_id: str) -> None:
    """Weights in the models folder that are not weights: the job ends failed, says why without the server's
    path or the file's bytes, and leaves no outputs."""
    models_dir = Path(pg_stack.env["SAFT_MODELS_DIR"])
    (models_dir / "broken.bin").write_bytes(b"SECRET-CONTENT " * 100)
    body = {"dataset_id": dataset_id, "pretrained": "broken.bin", "hyperparameters": {"epochs": 1}}
    with pg_stack.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        done = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"}, timeout=120)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "model_unavailable"
        message = done["error"]["message"]
        assert "broken.bin" in message
        assert str(models_dir) not in message and "SECRET" not in message and "/" not in message, message
        events = c.get(f"/v1/jobs/{done['id']}/events").json()["data"]
        assert events[-1]["kind"] == "error" and events[-1]["data"]["code"] == "model_unavailable"
        assert str(models_dir) not in str(events)
    assert not (pg_stack.data_dir / "jobs" / done["id"]).exists()


def test_a_diverging_job_succeeds_with_warnings_in_its_view_its_events_and_the_client(
    pg_stack: Stack, dataset_id: str
) -> None:
    """Learning rate 5 (the issue's job): the loss climbs to chance level. The job still succeeds, but its public
    view (one and listed) carries the warnings, each also an event, and the client parses them. No
    validation_fraction is sent: the default holds out a validation split, so the frontier is judged too."""
    from saft_client.models import Job as ClientJob

    from saft_core.frontier import recommend_alpha
    from saft_core.health import CODES

    body = {"dataset_id": dataset_id, "hyperparameters": {"epochs": 2, "batch_size": 6, "learning_rate": 5.0}}
    with pg_stack.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["validation_fraction"] == 0.2 and r.json()["warnings"] == []
        done = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", f"{done['error']}\n{pg_stack.logs()}"
        codes = [w["code"] for w in done["warnings"]]
        assert codes[:2] == ["loss_diverged", "loss_at_chance"] and set(codes) <= set(CODES), codes
        for w in done["warnings"]:
            assert set(w) == {"code", "message", "hint"} and w["message"] and w["hint"]
        assert "try a learning rate 10x lower (0.5 instead of 5)" in done["warnings"][0]["hint"]
        # the other two codes say what the job's own validation rows say
        body_ev = c.get(f"/v1/jobs/{done['id']}/evaluations").json()
        val = {e["alpha"]: e["top1"] for e in body_ev["data"] if e["dataset"] == "validation"}
        assert val and body_ev["recommended_alpha"] == recommend_alpha(val, 3)  # 1 of each class's 6 held out
        assert ("worse_than_zero_shot" in codes) == (val[1.0] < val[0.0])
        assert ("recommended_alpha_zero" in codes) == (body_ev["recommended_alpha"] == 0.0)
        events = c.get(f"/v1/jobs/{done['id']}/events").json()["data"]
        warned = [e for e in events if e["kind"] == "warning"]
        assert [(e["level"], e["message"], e["data"]["code"], e["data"]["hint"]) for e in warned] == [
            ("warning", w["message"], w["code"], w["hint"]) for w in done["warnings"]]
        assert events[-1]["kind"] == "status" and events[-1]["data"]["status"] == "succeeded"
        listed = next(j for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"] if j["id"] == done["id"])
        assert listed["warnings"] == done["warnings"]
    parsed = ClientJob.model_validate(done)
    assert [w.code for w in parsed.warnings] == codes and parsed.warnings[0].hint == done["warnings"][0]["hint"]


def test_full_finetuning_job_has_a_checkpoint_but_no_mask(pg_stack: Stack, dataset_id: str, shapes_dir: Path) -> None:
    body = {
        "dataset_id": dataset_id,
        "method": {"type": "full"},
        "hyperparameters": {"epochs": 1, "batch_size": 6},
        "validation_fraction": 0,  # the default holds out a split; this job has none
    }
    with pg_stack.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        done = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", done["error"]
        assert done["method"] == {"type": "full"}
        r = c.get(f"/v1/jobs/{done['id']}/mask")
        assert r.status_code == 404 and r.json()["code"] == "mask_not_available"
        assert "full fine-tuning" in r.json()["detail"]
        assert c.get(f"/v1/jobs/{done['id']}/checkpoint").status_code == 200
        evaluations = c.get(f"/v1/jobs/{done['id']}/evaluations").json()
        assert evaluations == {"data": [], "recommended_alpha": None, "alpha_rule": None}  # no validation split
        assert done["checkpoint"]["recommended_alpha"] is None and done["checkpoint"]["alpha_rule"] is None
        # nothing recommended: classify at the recommended alpha uses the fine-tuned model (alpha 1)
        image = next(p for p in shapes_dir.rglob("*.png"))
        r = c.post("/v1/classify", data={"job_id": done["id"], "alpha": "recommended"},
                   files=[("images", (image.name, image.read_bytes(), "image/png"))])
        assert r.status_code == 200 and r.json()["alpha"] == 1.0, r.text
