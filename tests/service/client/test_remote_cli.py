"""The ``saft`` remote commands (datasets, jobs) as a user runs them: console scripts in subprocesses with
SAFT_URL and SAFT_API_KEY set, against the real service on both stacks, on the job of ``remote_run``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from .conftest import RemoteRun, cli_json, run_cli

pytestmark = pytest.mark.service


def test_follow_draws_stage_step_and_loss_and_exits_zero(remote_run: RemoteRun) -> None:
    follow = remote_run.follow
    assert follow is not None and follow.returncode == 0, follow.stdout
    out = follow.stdout
    assert "[training]" in out and "loss=" in out  # the stage line and the bar's postfix
    assert "job succeeded" in out and remote_run.job.id in out
    # the frontier table: a row per set, a column per alpha, the recommended one starred and explained
    rec = remote_run.job.checkpoint.recommended_alpha
    assert "top-1 at alpha" in out and f"* recommended alpha {rec:g} (one-standard-error rule" in out


def test_datasets_upload_and_list(remote_run: RemoteRun, tmp_path: Path) -> None:
    r = remote_run
    # `saft datasets upload DIR` made the training set in the fixture: the folder's classes and counts.
    assert r.dataset.name == "shapes-cli" and r.dataset.counts == {c: 6 for c in r.dataset.classes}
    listed = cli_json(r.stack, "datasets", "list")
    assert {r.dataset.id, r.eval_dataset.id} <= {d["id"] for d in listed}
    out = run_cli(r.stack, "datasets", "show", r.dataset.id)
    assert out.returncode == 0 and "red_circle (red circle): 6" in out.stdout
    # Neither a folder nor an archive: a message, status 2, nothing sent.
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    out = run_cli(r.stack, "datasets", "upload", str(bad))
    assert out.returncode == 2 and "not a folder or a .zip" in out.stderr


def test_jobs_list_show_download_classify(remote_run: RemoteRun, tmp_path: Path) -> None:
    r = remote_run
    job_id = r.job.id
    assert job_id in [j["id"] for j in cli_json(r.stack, "jobs", "list", "--status", "succeeded")]
    shown = cli_json(r.stack, "jobs", "show", job_id)
    assert shown["job"]["status"] == "succeeded" and len(shown["evaluations"]) == 10  # 2 sets x 5 alphas
    assert {e["alpha"] for e in shown["evaluations"]} == {0.0, 0.25, 0.5, 0.75, 1.0}
    out = cli_json(r.stack, "jobs", "download", job_id, "--out", str(tmp_path / "d.safetensors"))
    assert out["sha256"] == r.job.checkpoint.sha256 == hashlib.sha256((tmp_path / "d.safetensors").read_bytes()).hexdigest()
    cli_json(r.stack, "jobs", "download", job_id, "--mask", "--out", str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.metadata()["format"] == "saft-mask"
    image = sorted((r.stack.data_dir / "datasets" / r.dataset.id / "red_circle").iterdir())[0]
    res = cli_json(r.stack, "jobs", "classify", job_id, str(image), "--top-k", "2")
    assert res["job_id"] == job_id and len(res["results"][0]["predictions"]) == 2
    human = run_cli(r.stack, "jobs", "classify", job_id, str(image))
    assert human.returncode == 0 and human.stdout.startswith(f"{image}: red circle ")
    rec = cli_json(r.stack, "jobs", "classify", job_id, str(image), "--alpha", "recommended")
    assert rec["alpha"] == r.job.checkpoint.recommended_alpha
    out = run_cli(r.stack, "jobs", "classify", job_id, str(image), "--alpha", "best")
    assert out.returncode == 2 and "or 'recommended'" in out.stderr


def test_errors_exit_2_with_the_problem(remote_run: RemoteRun) -> None:
    r = remote_run
    out = run_cli(r.stack, "jobs", "cancel", r.job.id, "--json")
    assert out.returncode == 2 and "409 job_finished" in out.stderr
    assert json.loads(out.stdout)["error"]["code"] == "job_finished"
    out = run_cli(r.stack, "jobs", "show", r.job.id, tenant="beta")  # another tenant's job
    assert out.returncode == 2 and "404 job_not_found" in out.stderr
    out = run_cli(r.stack, "jobs", "create", "--dataset", r.dataset.id, "--batch-size", "0")
    assert out.returncode == 2 and "422 validation_error" in out.stderr and "hyperparameters.batch_size" in out.stderr


def test_create_follow_of_a_failing_job_exits_1(remote_run: RemoteRun, shapes_dir: Path) -> None:
    """`saft jobs create ... --follow` on a dataset whose files are gone from the artifact store (removed here
    by hand, as a lost disk would): the job fails while loading, and follow exits 1."""
    r = remote_run
    ds = cli_json(r.stack, "datasets", "upload", str(shapes_dir), "--name", "doomed")
    shutil.rmtree(r.stack.data_dir / "datasets" / ds["id"])
    out = run_cli(
        r.stack, "jobs", "create", "--dataset", ds["id"], "--epochs", "1", "--batch-size", "6", "--ratio", "0.01",
        "--priority", "low", "--follow", "--json",
    )
    assert out.returncode == 1, out.stderr
    job = json.loads(out.stdout.strip().splitlines()[-1])["job"]
    assert job["status"] == "failed" and job["error"]["code"], job
    assert job["method"]["ratio"] == 0.01 and job["hyperparameters"]["epochs"] == 1  # finetune's options, sent
    assert job["priority"] == "low"
    deleted = cli_json(r.stack, "jobs", "delete", job["id"])
    assert deleted == {"deleted": job["id"]}
    assert run_cli(r.stack, "jobs", "show", job["id"]).returncode == 2
