"""The ``saft`` remote commands where no service is needed: what they refuse before any request, what they say
when nothing listens at the URL, a closed stdout, the follow progress bars and the summary of a finished job.
The same commands against the real service are in tests/client/test_remote_cli.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from saft_client import Evaluation, Job, JobEvent, SaftClientError
from saft_client._base import job_body

from saft_cli.remote import _Progress, _warnings_of, download_name, job_summary
from tests.fixtures.cli import saft_here


def saft(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """``saft ARGS`` in a subprocess, as a user runs it (its own logging, its own stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFT_")}
    streams = kw or {"capture_output": True}
    return subprocess.run([sys.executable, "-m", "saft_cli", *args], text=True, timeout=60, env=env,
                          **streams)


@pytest.fixture
def dead_url() -> str:
    """A local URL where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_option_is_refused_by_name(capsys, dead_url, value):
    status, _, err = saft_here(capsys, "jobs", "create", "--dataset", "ds_1", f"--lr={value}",
                               "--url", dead_url, "--api-key", "k")
    assert status == 2 and f"argument --lr: must be a finite number, got '{value}'" in err
    assert "Traceback" not in err and "JSON compliant" not in err
    # --grad-clip is a flag written by hand (0 disables it): refused the same way (NaN is not "disabled")
    status, _, err = saft_here(capsys, "jobs", "create", "--dataset", "ds_1", f"--grad-clip={value}",
                               "--url", dead_url, "--api-key", "k")
    assert status == 2 and f"argument --grad-clip: must be a finite number, got '{value}'" in err, err


def test_the_client_refuses_a_non_finite_job_option_by_name():
    for value in (float("nan"), float("inf")):
        with pytest.raises(SaftClientError, match="hyperparameters.grad_clip must be a finite number"):
            job_body("ds_1", grad_clip=value)  # pydantic would have written NaN as null: no clipping
        with pytest.raises(SaftClientError, match="method.ratio must be a finite number"):
            job_body("ds_1", ratio=value)


def test_no_key_names_the_variable_and_the_option(capsys, dead_url, monkeypatch):
    monkeypatch.delenv("SAFT_API_KEY", raising=False)
    status, _, err = saft_here(capsys, "jobs", "list", "--url", dead_url)
    assert status == 2
    assert "no API key" in err and "SAFT_API_KEY" in err and "--api-key" in err and "saft serve" in err
    assert "Authorization" not in err  # not HTTP advice


def test_nothing_listening_is_one_message_naming_the_url_and_how_to_start(dead_url):
    r = saft("jobs", "list", "--url", dead_url, "--api-key", "k")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr  # no retry warnings, no traceback
    assert lines[0].startswith(f"error: no SAFT service answers at {dead_url}") and "refused" in lines[0]
    assert "make run" in lines[1] and "saft serve" in lines[1] and "SAFT_URL" in lines[1]


def test_a_closed_stdout_ends_quietly():
    """`saft ... | head`: the reader is gone before the command writes (a command that needs no service here;
    the service tier runs `saft jobs list` the same way)."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = saft("world", "domains", stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert r.stderr == "" and r.returncode == 141  # 128 + SIGPIPE, as a shell tool killed by it


def _event(i: int, kind: str, data: dict, level: str = "info", message: str = "") -> JobEvent:
    return JobEvent.model_validate(dict(id=i, created_at=datetime(2026, 1, 1, tzinfo=UTC), kind=kind, level=level,
                                        message=message, data=data))


def _screen(text: str) -> list[str]:
    """What a terminal shows for ``text``: each line as its last carriage-return overwrite left it."""
    shown = []
    for line in text.split("\n"):
        cells: list[str] = []
        for part in line.split("\r"):
            cells[: len(part)] = part
        shown.append("".join(cells).rstrip())
    return [s for s in shown if s]


def test_follow_leaves_each_stages_bar_on_screen_without_a_stray_comma(capsys):
    progress = _Progress(quiet=False)
    events = [
        _event(1, "stage", {"stage": "scoring"}),
        _event(2, "progress", {"stage": "scoring", "step": 2, "total_steps": 2}),
        _event(3, "stage", {"stage": "training"}),
        *(_event(3 + s, "progress", {"stage": "training", "step": s, "total_steps": 3, "train_loss": 1.0 / s})
          for s in (1, 2, 3)),
        _event(7, "warning", {"code": "loss_at_chance", "hint": "try a lower learning rate"}, "warning",
               "the training loss ended at chance level"),
        _event(8, "stage", {"stage": "evaluating"}),
        _event(9, "progress", {"stage": "evaluating", "step": 5, "total_steps": 5}),
    ]
    for e in events:
        progress(e)
    progress.close()
    screen = _screen(capsys.readouterr().err)
    bars = [s for s in screen if "%|" in s]
    assert [b.split(":")[0] for b in bars] == ["scoring", "training", "evaluating"], screen  # each one stays
    assert bars[1].startswith("training: 100%|") and bars[1].endswith("| 3/3, loss=0.3333"), bars[1]
    assert bars[0].endswith("| 2/2") and bars[2].endswith("| 5/5")
    assert any(s.endswith("the training loss ended at chance level") for s in screen)
    assert progress.warnings == [{"code": "loss_at_chance", "message": "the training loss ended at chance level",
                                  "hint": "try a lower learning rate"}]


def _job(**over: object) -> Job:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    body = {
        "id": "job_1", "status": "succeeded", "stage": None,
        "progress": {"stage": None, "step": 12, "total_steps": 12},
        "metrics": {"train_loss_first": 1.0986, "train_loss_last": 0.41, "train_loss_last_epoch": 0.4169,
                    "train_steps": 12.0},
        "error": None, "dataset_id": "ds_1", "eval_dataset_ids": ["ds_2"], "model": "saft-tiny", "pretrained": None,
        "method": {"type": "saft"}, "hyperparameters": {}, "validation_fraction": 0.25, "templates": [],
        "metadata": {}, "cancel_requested": False, "attempts": 1,
        "checkpoint": {"sha256": "ab" * 32, "size_bytes": 975812, "url": "/v1/jobs/job_1/checkpoint",
                       "recommended_alpha": 0.75, "alpha_rule": "one-standard-error"},
        "created_at": t0, "started_at": t0 + timedelta(seconds=2), "finished_at": t0 + timedelta(seconds=43),
    }
    return Job.model_validate({**body, **over})


def _evaluations() -> list[Evaluation]:
    top1 = {"validation": (0.333, 0.667, 0.833, 0.833, 0.833), "painting": (0.25, 0.375, 0.5, 0.625, 0.5)}
    return [Evaluation(dataset=name, dataset_name=name, model="interpolated", alpha=a, top1=t, top5=1.0,
                       n=6 if name == "validation" else 40, num_classes=3)
            for name, row in top1.items() for a, t in zip((0.0, 0.25, 0.5, 0.75, 1.0), row, strict=True)]


def test_the_summary_of_a_finished_job_fits_one_screen():
    warnings = [{"code": "worse_than_zero_shot", "message": "fine-tuned top-1 40.0% is below zero-shot's 50.0%",
                 "hint": "try a learning rate 10x lower"}]
    text = job_summary(_job(), _evaluations(), warnings)
    lines = text.splitlines()
    assert lines[0] == "job job_1 succeeded in 41 s"
    assert "training loss 1.0986 -> 0.4169 (mean of the last epoch) over 12 steps" in lines
    head = next(i for i, ln in enumerate(lines) if ln.startswith("top-1"))
    assert lines[head].split() == ["top-1", "zero-shot", "fine-tuned", "alpha", "0.75*"]
    assert lines[head + 1].split() == ["validation", "33.3%", "83.3%", "83.3%", "(n=6)"]
    assert lines[head + 2].split() == ["painting", "25.0%", "50.0%", "62.5%", "(n=40)"]
    assert any(ln.startswith("* recommended alpha 0.75 (one-standard-error rule") for ln in lines)
    assert "checkpoint: 952.9 KiB (sha256 abababababab...); download: saft jobs download job_1" in lines
    assert lines[-2:] == ["warning [worse_than_zero_shot]: fine-tuned top-1 40.0% is below zero-shot's 50.0%",
                          "  try: try a learning rate 10x lower"]
    assert len(lines) <= 15
    # `saft jobs show`: every alpha of the frontier instead of the three columns
    full = job_summary(_job(), _evaluations(), [], every_alpha=True)
    assert "top-1 at alpha" in full and "0.75*" in full and "warning" not in full
    # a failed job: its error, no table
    failed = job_summary(_job(status="failed", checkpoint=None, metrics={},
                              error={"code": "dataset_missing", "message": "gone"}), [], [])
    assert failed.splitlines() == ["job job_1 failed in 41 s", "  dataset_missing: gone"]


def test_warnings_come_from_the_job_or_else_from_the_events_seen():
    seen = [{"code": "loss_diverged", "message": "m", "hint": "h"}]
    job = _job()
    if "warnings" in Job.model_fields:  # a client that has the field reads the job's own list
        assert _warnings_of(job, seen) == []
        listed = _job(warnings=[{"code": "recommended_alpha_zero", "message": "m2", "hint": "h2"}])
        assert _warnings_of(listed, seen) == [{"code": "recommended_alpha_zero", "message": "m2", "hint": "h2"}]
    else:  # an older client: the warning events seen while following
        assert _warnings_of(job, seen) == seen


def test_download_names():
    assert download_name("job_1", mask=False) == "job_1.safetensors"
    assert download_name("job_1", mask=True) == "job_1-mask.safetensors"
