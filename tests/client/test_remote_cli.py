"""The ``saft`` remote commands (datasets, jobs) as a user runs them: console scripts in subprocesses with
SAFT_URL and SAFT_API_KEY set, against the real service on both stacks, on the job of ``remote_run``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open
from saft_client._transfer import umask

from tests.fixtures.remote import RemoteRun, cli_env, cli_json, run_cli
from tests.fixtures.stack import REPO, Stack, saft

pytestmark = pytest.mark.service


def test_follow_draws_stage_step_and_loss_and_ends_with_a_summary(remote_run: RemoteRun) -> None:
    follow = remote_run.follow
    assert follow is not None and follow.returncode == 0, follow.stdout
    out = follow.stdout
    job = remote_run.job
    assert "[training]" in out and "job succeeded" in out  # the stage line, the status event
    # The training bar's last state, its loss after the count with no stray space before the comma, left on
    # screen: the line after it is the next stage's (a bar that vanished leaves a line of blanks there).
    lines = out.splitlines()
    last = max(i for i, ln in enumerate(lines) if re.match(r"training: 100%\|.*\| (\d+)/\1, loss=\d", ln))
    assert " , loss" not in out and lines[last + 1].strip(), lines[last - 1: last + 2]
    # the summary: status and duration, loss, top-1 per set at zero-shot, fine-tuned and the recommended alpha
    rec = job.checkpoint.recommended_alpha
    summary = lines[lines.index(next(ln for ln in lines if ln.startswith(f"job {job.id} succeeded in "))):]
    assert re.fullmatch(r"training loss \S+ -> \S+ \(mean of the last epoch\) over \d+ steps", summary[1]), summary
    assert summary[2].split() == ["top-1", "zero-shot", "fine-tuned", "alpha", f"{rec:g}*"]
    assert [ln.split()[0] for ln in summary[3:5]] == ["validation", "shifted"]
    assert any(ln.startswith(f"* recommended alpha {rec:g} (one-standard-error rule") for ln in summary)
    assert any(ln.startswith("checkpoint: ") and f"saft jobs download {job.id}" in ln for ln in summary)
    assert len(summary) <= 12


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
    # download: JOB.safetensors and JOB-mask.safetensors by default, with the mode any new file gets
    out = cli_json(r.stack, "jobs", "download", job_id, cwd=tmp_path)
    ckpt = tmp_path / f"{job_id}.safetensors"
    assert out["path"] == ckpt.name and out["sha256"] == r.job.checkpoint.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o666 & ~umask()  # not the temporary file's 0600
    cli_json(r.stack, "jobs", "download", job_id, "--mask", cwd=tmp_path)
    with safe_open(str(tmp_path / f"{job_id}-mask.safetensors"), "np") as f:
        assert f.metadata()["format"] == "saft-mask"
    # never over a file (the checkpoint just written) without --force
    ckpt.write_bytes(b"mine")
    refused = run_cli(r.stack, "jobs", "download", job_id, "--out", f"{job_id}.safetensors", cwd=tmp_path)
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr and ckpt.read_bytes() == b"mine"
    cli_json(r.stack, "jobs", "download", job_id, "--force", cwd=tmp_path)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == r.job.checkpoint.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{job_id}-mask.safetensors", f"{job_id}.safetensors"]
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
    assert out.returncode == 2 and "422 validation_error" in out.stderr
    assert out.stderr.count("hyperparameters.batch_size") == 1, out.stderr  # each field once, not twice
    assert "body." not in out.stderr
    # a key the service does not know: the 401, and where the key comes from
    out = run_cli(r.stack, "jobs", "list", env={"SAFT_API_KEY": "saft_" + "x" * 43})
    assert out.returncode == 2 and "401 invalid_api_key" in out.stderr
    assert "SAFT_API_KEY" in out.stderr and "--api-key" in out.stderr


def test_a_closed_stdout_ends_quietly(remote_run: RemoteRun) -> None:
    """`saft jobs list | head`: the reader has gone before the list is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run(saft("jobs", "list"), cwd=REPO, env=cli_env(remote_run.stack), stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == ""  # no BrokenPipeError traceback


def test_saft_serve_prints_the_key_and_the_export_line_last(embedded_stack: Stack) -> None:
    """`make run`: the worker's start-up output (Celery's banner, its warnings) comes first, then the URL and
    the key, ending with the line to paste into another shell; Alembic says nothing."""
    lines = embedded_stack.procs[0].lines
    key = embedded_stack.keys["alpha"]
    at_key = next(i for i, ln in enumerate(lines) if ln.startswith("API key"))
    assert any("[tasks]" in ln for ln in lines[:at_key]) and any("saft.run_job" in ln for ln in lines[:at_key])
    banner = lines[at_key:]
    export = next(i for i, ln in enumerate(banner) if ln.strip().startswith("export "))
    assert banner[export].strip() == f"export SAFT_URL={embedded_stack.base_url} SAFT_API_KEY={key}"
    assert not any("alembic" in ln for ln in lines)


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
