"""The path a user takes, over real HTTP against a real API and a real Celery worker process, on Postgres +
Redis and on the embedded default: upload -> job -> poll -> events -> mask -> checkpoint -> evaluations ->
classify; and another tenant sees none of it."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open

from saft_core.frontier import ALPHA_GRID, RULE, recommend_alpha
from tests.fixtures.stack import Stack, wait_for_job

pytestmark = pytest.mark.service

STAGES = ["loading", "scoring", "masking", "training", "evaluating", "saving"]


@dataclass
class Trained:
    stack: Stack
    dataset: dict
    eval_dataset: dict
    job: dict
    seconds: float


@pytest.fixture(scope="module")
def trained(stack: Stack, shapes_zip: bytes, shifted_tar_gz: bytes) -> Trained:
    """Upload a training and an eval set, POST a tiny SAFT job and poll it to its end."""
    with stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "shapes"}, files={"file": ("shapes.zip", shapes_zip)})
        assert r.status_code == 201, r.text
        ds = r.json()
        r = c.post(
            "/v1/datasets", data={"name": "shifted"}, files={"file": ("shifted.tar.gz", shifted_tar_gz)}
        )
        assert r.status_code == 201, r.text
        ev = r.json()
        body = {
            "dataset_id": ds["id"],
            "model": "saft-tiny",
            "method": {"type": "saft", "ratio": 0.01},
            "hyperparameters": {"epochs": 2, "learning_rate": 0.001, "batch_size": 6, "seed": 0},
            "validation_fraction": 0.34,
            "eval_dataset_ids": [ev["id"]],
            "metadata": {"purpose": "test"},
        }
        t0 = time.monotonic()
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "queued"
        job = wait_for_job(c, r.json()["id"], until={"succeeded", "failed", "cancelled"})
        seconds = time.monotonic() - t0
    assert job["status"] == "succeeded", f"{job['error']}\n{stack.logs()}"
    print(f"[{stack.kind}] tiny end-to-end job took {seconds:.1f} s (submit to succeeded)")
    return Trained(stack, ds, ev, job, seconds)


def test_upload_reports_classes_and_counts(trained: Trained) -> None:
    ds = trained.dataset
    assert ds["status"] == "ready"
    assert ds["num_images"] == 18
    assert ds["classes"] == ["blue_square", "green_triangle", "red_circle"]
    assert ds["class_names"] == ["blue square", "green triangle", "red circle"]  # from classes.json
    assert ds["counts"] == {c: 6 for c in ds["classes"]}
    with trained.stack.client() as c:
        assert c.get(f"/v1/datasets/{ds['id']}").json()["num_images"] == 18
        assert ds["id"] in [d["id"] for d in c.get("/v1/datasets").json()["data"]]
    assert (trained.stack.data_dir / "datasets" / ds["id"] / "red_circle").is_dir()


def test_finished_job_reports_progress_and_times(trained: Trained) -> None:
    job = trained.job
    assert job["error"] is None
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["attempts"] == 1
    assert job["metadata"] == {"purpose": "test"}
    assert job["method"] == {**job["method"], "type": "saft", "ratio": 0.01}
    assert job["checkpoint"]["url"] == f"/v1/jobs/{job['id']}/checkpoint"
    assert job["warnings"] == []  # a healthy run: the loss fell, fine-tuning beat zero-shot, alpha 0.25 or more


def test_events_walk_the_stages_in_order(trained: Trained) -> None:
    with trained.stack.client() as c:
        events = c.get(f"/v1/jobs/{trained.job['id']}/events").json()["data"]
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        stages = [e["data"]["stage"] for e in events if e["kind"] == "stage"]
        assert stages == STAGES
        statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
        assert statuses == ["queued", "running", "succeeded"]
        assert not [e for e in events if e["kind"] == "warning" or e["level"] == "warning"]  # a healthy run
        training = [e for e in events if e["kind"] == "progress" and e["data"]["stage"] == "training"]
        assert training and training[-1]["data"]["step"] == training[-1]["data"]["total_steps"]
        assert "train_loss" in training[-1]["data"]
        later = c.get(f"/v1/jobs/{trained.job['id']}/events", params={"after": ids[2]}).json()["data"]
        assert [e["id"] for e in later] == ids[3:]
        # the production layout runs the job's data loading in 2 worker processes (SAFT_DATA_WORKERS)
        notes = [e["message"] for e in events if e["kind"] == "message"]
        workers = "2 data-loader workers" if trained.stack.kind == "postgres+redis" else "no data-loader workers"
        assert any(workers in n for n in notes), notes


def test_sse_stream_replays_events_and_ends(trained: Trained) -> None:
    job_id = trained.job["id"]
    with trained.stack.client() as c:
        listed = c.get(f"/v1/jobs/{job_id}/events").json()["data"]
        seen: list[tuple[str, dict]] = []
        kind = None
        with c.stream("GET", f"/v1/jobs/{job_id}/events/stream", timeout=30) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    seen.append((kind or "", json.loads(line.split(":", 1)[1])))
                    if kind == "end":
                        break
    assert seen[-1][0] == "end"
    assert [d["id"] for _, d in seen[:-1]] == [e["id"] for e in listed]
    assert [k for k, _ in seen[:-1]] == [e["kind"] for e in listed]
    # A reconnecting EventSource sends Last-Event-ID and gets only what came after it.
    with trained.stack.client() as c:
        resume = str(listed[-3]["id"])
        with c.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers={"Last-Event-ID": resume}) as r:
            ids = [int(line.split(":", 1)[1]) for line in r.iter_lines() if line.startswith("id:")]
    assert ids == [e["id"] for e in listed[-2:]]


def test_mask_summary_and_file(trained: Trained) -> None:
    job_id = trained.job["id"]
    with trained.stack.client() as c:
        mask = c.get(f"/v1/jobs/{job_id}/mask").json()
        assert mask["ratio"] == 0.01
        assert mask["k"] == round(0.01 * mask["num_eligible"])
        assert sum(t["selected"] for t in mask["tensors"]) == mask["k"]
        assert all(0 <= t["selected"] <= t["numel"] for t in mask["tensors"])
        r = c.get(mask["url"])
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == mask["sha256"] == r.headers["x-checksum-sha256"]


def test_checkpoint_download_matches_its_sha256(trained: Trained, tmp_path: Path) -> None:
    job = trained.job
    with trained.stack.client() as c:
        r = c.get(f"/v1/jobs/{job['id']}/checkpoint")
    assert r.status_code == 200
    digest = hashlib.sha256(r.content).hexdigest()
    assert digest == job["checkpoint"]["sha256"] == r.headers["x-checksum-sha256"]
    assert len(r.content) == job["checkpoint"]["size_bytes"]
    path = tmp_path / "delta.safetensors"
    path.write_bytes(r.content)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "saft-sparse-delta"
    assert meta["base_model"] == "saft-tiny"
    assert json.loads(meta["classes"]) == ["blue square", "green triangle", "red circle"]
    assert any(k.endswith(":idx") for k in keys) and any(k.endswith(":delta") for k in keys)


def test_evaluations_cover_every_set_along_alpha_with_a_recommendation(trained: Trained) -> None:
    with trained.stack.client() as c:
        body = c.get(f"/v1/jobs/{trained.job['id']}/evaluations").json()
    evals = body["data"]
    ev_id = trained.eval_dataset["id"]
    assert [(e["alpha"], e["dataset"]) for e in evals] == [(a, d) for a in ALPHA_GRID for d in ("validation", ev_id)]
    assert [e["model"] for e in evals if e["dataset"] == ev_id] == [
        "zero-shot", "interpolated", "interpolated", "interpolated", "fine-tuned"]
    # the recommendation is the frontier's rule over the validation rows, also on the job's checkpoint
    validation = {e["alpha"]: e["top1"] for e in evals if e["dataset"] == "validation"}
    assert body["recommended_alpha"] == recommend_alpha(validation, 6) and body["alpha_rule"] == RULE
    assert trained.job["checkpoint"]["recommended_alpha"] == body["recommended_alpha"]
    assert trained.job["checkpoint"]["alpha_rule"] == RULE
    for e in evals:
        assert 0.0 <= e["top1"] <= e["top5"] <= 1.0
        assert e["num_classes"] == 3
        assert e["n"] == (9 if e["dataset"] == ev_id else 6)
        if e["dataset"] == ev_id:
            assert e["dataset_name"] == "shifted"


def test_classify_with_the_finetuned_model_and_zero_shot(trained: Trained, shapes_dir: Path) -> None:
    images = [shapes_dir / "red_circle" / "0000.png", shapes_dir / "blue_square" / "0001.png"]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
    with trained.stack.client() as c:
        r = c.post("/v1/classify", data={"job_id": trained.job["id"], "top_k": "2"}, files=files)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["labels"] == ["blue square", "green triangle", "red circle"]  # the job's classes
        assert len(out["results"]) == 2
        for res in out["results"]:
            assert len(res["predictions"]) == 2
            scores = [p["score"] for p in res["predictions"]]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        r = c.post(
            "/v1/classify",
            data={"model": "saft-tiny", "labels": json.dumps(["circle", "square", "triangle"]), "top_k": "3"},
            files=files[:1],
        )
        assert r.status_code == 200, r.text
        preds = r.json()["results"][0]["predictions"]
        assert {p["label"] for p in preds} == {"circle", "square", "triangle"}
        assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-4)
        # alpha=0 is the base model: it must agree with zero-shot on the same labels.
        labels = json.dumps(["blue square", "green triangle", "red circle"])
        base = c.post("/v1/classify", data={"model": "saft-tiny", "labels": labels}, files=files[:1]).json()
        at0 = c.post(
            "/v1/classify",
            data={"job_id": trained.job["id"], "labels": labels, "alpha": "0"},
            files=files[:1],
        ).json()
        assert at0["results"][0]["predictions"][0]["score"] == pytest.approx(
            base["results"][0]["predictions"][0]["score"], abs=1e-4
        )


def test_classify_at_the_recommended_alpha(trained: Trained, shapes_dir: Path) -> None:
    """`alpha=recommended` applies the job's recommended alpha and says which; a bad alpha is a 422."""
    recommended = trained.job["checkpoint"]["recommended_alpha"]
    assert recommended in ALPHA_GRID
    files = [("images", ("a.png", (shapes_dir / "green_triangle" / "0002.png").read_bytes(), "image/png"))]
    with trained.stack.client() as c:
        answers = {}
        for alpha in ("recommended", repr(recommended), "0", "1"):
            r = c.post("/v1/classify", data={"job_id": trained.job["id"], "alpha": alpha, "top_k": "3"}, files=files)
            assert r.status_code == 200, r.text
            answers[alpha] = r.json()
        assert answers["recommended"]["alpha"] == recommended
        assert answers["recommended"]["results"] == answers[repr(recommended)]["results"]
        assert answers["0"]["alpha"] == 0.0 and answers["1"]["alpha"] == 1.0
        # the ends differ on this image, so the equality above tells the recommended alpha from the others
        assert answers["0"]["results"] != answers["1"]["results"]
        for bad in ("best", "1.5", "-0.5"):
            r = c.post("/v1/classify", data={"job_id": trained.job["id"], "alpha": bad}, files=files)
            assert r.status_code == 422 and r.json()["code"] == "validation_error", r.text


def test_jobs_list_pages_with_a_cursor(trained: Trained) -> None:
    with trained.stack.client() as c:
        everything = [j["id"] for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"]]
        assert trained.job["id"] in everything
        pages: list[str] = []
        cursor = None
        while True:
            params: dict[str, object] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/jobs", params=params).json()
            pages += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == everything
        succeeded = c.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
        assert all(j["status"] == "succeeded" for j in succeeded)
        assert c.get("/v1/jobs", params={"cursor": "not-a-cursor"}).json()["code"] == "invalid_cursor"


def test_another_tenant_sees_none_of_it(trained: Trained, shapes_dir: Path) -> None:
    job_id, ds_id = trained.job["id"], trained.dataset["id"]
    with trained.stack.client("beta") as beta:
        for path in (
            f"/v1/datasets/{ds_id}",
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/events",
            f"/v1/jobs/{job_id}/events/stream",
            f"/v1/jobs/{job_id}/mask",
            f"/v1/jobs/{job_id}/mask/file",
            f"/v1/jobs/{job_id}/checkpoint",
            f"/v1/jobs/{job_id}/evaluations",
        ):
            r = beta.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] in ("dataset_not_found", "job_not_found")
        assert beta.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert beta.delete(f"/v1/datasets/{ds_id}").status_code == 404
        assert job_id not in [j["id"] for j in beta.get("/v1/jobs").json()["data"]]
        assert ds_id not in [d["id"] for d in beta.get("/v1/datasets").json()["data"]]
        r = beta.post("/v1/jobs", json={"dataset_id": ds_id, "hyperparameters": {"epochs": 1}})
        assert r.status_code == 422 and r.json()["code"] == "dataset_not_found"
        img = (shapes_dir / "red_circle" / "0000.png").read_bytes()
        r = beta.post(
            "/v1/classify", data={"job_id": job_id}, files=[("images", ("a.png", img, "image/png"))]
        )
        assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    with trained.stack.client() as alpha:  # still there for its owner
        assert alpha.get(f"/v1/jobs/{job_id}").status_code == 200


def test_requests_without_a_valid_key_are_refused(trained: Trained) -> None:
    with httpx.Client(base_url=trained.stack.base_url) as anon:
        r = anon.get("/v1/jobs")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        r = anon.get("/v1/jobs", headers={"Authorization": "Bearer saft_not-a-real-key"})
        assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"
        assert anon.get("/healthz").json() == {"status": "ok", "checks": {}}
