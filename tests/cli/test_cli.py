"""The ``saft`` command line. Arguments and errors run in this process (``main(argv)``, output captured);
the end-to-end runs are a user's: a subprocess with real files (marked slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saft_core.checkpoint import load_delta, load_mask
from saft_core.frontier import ALPHA_GRID
from tests.fixtures.cli import saft_here


def saft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saft_cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def finetuned(shapes_dir, shapes_eval_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ck.safetensors"
    # no validation split (the default holds out 20 %): the run without a recommendation
    r = saft("finetune", "--train", str(shapes_dir), "--eval", f"shifted={shapes_eval_dir}", "--epochs", "2",
             "--batch-size", "8", "--lr", "2e-3", "--seed", "3", "--out", str(out), "--json", "--device", "cpu",
             "--validation-fraction", "0")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout.strip().splitlines()[-1]), r


@pytest.mark.slow
def test_finetune_writes_checkpoint_and_mask_with_progress(finetuned):
    out, summary, r = finetuned
    assert out.is_file() and Path(summary["mask"]).is_file()
    assert summary["k"] == sum(i.numel() for i in load_mask(summary["mask"]).values())
    assert load_delta(out).metadata["classes"] == json.dumps(summary["classes"])
    assert sorted((e["dataset"], e["alpha"], e["model"]) for e in summary["evaluations"]) == [
        ("shifted", 0.0, "zero-shot"), ("shifted", 0.25, "interpolated"), ("shifted", 0.5, "interpolated"),
        ("shifted", 0.75, "interpolated"), ("shifted", 1.0, "fine-tuned")]
    assert summary["recommended_alpha"] is None and summary["alpha_rule"] is None  # no validation split
    assert summary["warnings"] == [] and "warning" not in r.stderr  # the loss fell: a healthy run
    for stage in ("[loading]", "[scoring]", "[masking]", "[training]", "[evaluating]", "[saving]"):
        assert stage in r.stderr
    assert "training:" in r.stderr  # a tqdm bar was drawn
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.slow
def test_finetune_json_reports_timings_and_memory_and_dense_engine_agrees(finetuned, shapes_dir, tmp_path):
    out, summary, _ = finetuned
    assert set(summary["timings"]) == {"scoring_s", "masking_s", "training_s", "evaluating_s"}
    assert all(v > 0 for v in summary["timings"].values())
    assert summary["steps"] == 6  # 24 images / batch 8 x 2 epochs
    assert 50 < summary["peak_memory_mb"] < 100_000
    # the default engine is the sparse one; the dense reference gives the same checkpoint within tolerance
    dense = tmp_path / "dense.safetensors"
    r = saft("finetune", "--train", str(shapes_dir), "--epochs", "2", "--batch-size", "8", "--lr", "2e-3",
             "--seed", "3", "--out", str(dense), "--quiet", "--device", "cpu", "--grad-engine", "dense",
             "--validation-fraction", "0")
    assert r.returncode == 0, r.stderr
    a, b = load_delta(out), load_delta(dense)
    assert a.tensors.keys() == b.tensors.keys()
    for n in a.tensors:
        assert torch.equal(a.tensors[n][0], b.tensors[n][0])  # same mask
        # Adam normalises tiny gradients, so summation-order noise can show: within 5 % of one step (lr)
        torch.testing.assert_close(a.tensors[n][1], b.tensors[n][1], rtol=1e-2, atol=1e-4)


@pytest.mark.slow
def test_finetune_twice_with_same_seed_is_identical(finetuned, shapes_dir, tmp_path):
    out, summary, _ = finetuned
    again = tmp_path / "again.safetensors"
    r = saft("finetune", "--train", str(shapes_dir), "--epochs", "2", "--batch-size", "8", "--lr", "2e-3",
             "--seed", "3", "--out", str(again), "--quiet", "--device", "cpu", "--validation-fraction", "0")
    assert r.returncode == 0, r.stderr
    a, b = load_delta(out), load_delta(again)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[n][1], b.tensors[n][1]) and torch.equal(a.tensors[n][0], b.tensors[n][0])
               for n in a.tensors)


@pytest.mark.slow
def test_classify_evaluate_and_apply(finetuned, shapes_eval_dir, tmp_path):
    out, summary, _ = finetuned
    image = next((shapes_eval_dir / "red_circle").iterdir())
    r = saft("classify", "--checkpoint", str(out), "--json", "--top-k", "2", str(image))
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout.strip().splitlines()[-1])["results"][0]["predictions"]
    assert len(preds) == 2 and {p["label"] for p in preds} <= set(summary["classes"])
    assert preds[0]["score"] >= preds[1]["score"]

    r = saft("evaluate", "--checkpoint", str(out), "--data", str(shapes_eval_dir), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    shifted = next(e for e in summary["evaluations"] if e["model"] == "fine-tuned")
    assert ev["top1"] == pytest.approx(shifted["top1"]) and ev["n"] == 12

    merged = tmp_path / "merged.safetensors"
    r = saft("apply", "--checkpoint", str(out), "--out", str(merged))
    assert r.returncode == 0, r.stderr
    r = saft("evaluate", "--model", "saft-tiny", "--pretrained", str(merged), "--data", str(shapes_eval_dir),
             "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["top1"] == pytest.approx(ev["top1"])


@pytest.mark.slow  # a second fine-tune
def test_frontier_table_and_classify_at_the_recommended_alpha(finetuned, shapes_dir, shapes_eval_dir, tmp_path):
    out = tmp_path / "val.safetensors"
    r = saft("finetune", "--train", str(shapes_dir), "--eval", f"shifted={shapes_eval_dir}", "--validation-fraction",
             "0.25", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    recommended = load_delta(out).recommended_alpha
    assert recommended in ALPHA_GRID
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("top-1 at alpha"))
    assert lines[header].split()[3:] == [f"{a:g}" + ("*" if a == recommended else "") for a in ALPHA_GRID]
    for line, name, n in zip(lines[header + 1:header + 3], ("validation", "shifted"), (6, 12), strict=True):
        cells = line.split()
        assert cells[0] == name and len(cells) == 7 and cells[-1] == f"(n={n})"
        assert all(c.endswith("%") and 0 <= float(c[:-1]) <= 100 for c in cells[1:6])
    assert f"* recommended alpha {recommended:g} (one-standard-error rule" in r.stdout

    image = next((shapes_eval_dir / "red_circle").iterdir())
    for checkpoint, expected in ((out, recommended), (finetuned[0], 1.0)):  # none recommended: the fine-tuned
        r = saft("classify", "--checkpoint", str(checkpoint), "--alpha", "recommended", "--json", str(image))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1])["alpha"] == expected
    r = saft("classify", "--checkpoint", str(out), "--alpha", "1.5", str(image))
    assert r.returncode == 2 and "alpha must be a number in [0, 1] or 'recommended'" in r.stderr


@pytest.mark.slow  # a fine-tune, in this process
def test_a_diverging_finetune_succeeds_with_warnings(shapes_dir, tmp_path, capsys):
    """Learning rate 5 (the issue's run): the checkpoint is written and the exit status is 0, but the run says
    what went wrong and what to try, on stderr and in --json. The default validation split is held out."""
    out = tmp_path / "lr5.safetensors"
    status, stdout, err = saft_here(capsys, "finetune", "--train", str(shapes_dir), "--epochs", "2", "--batch-size",
                                    "8", "--lr", "5", "--seed", "0", "--out", str(out), "--json", "--quiet",
                                    "--device", "cpu")
    assert status == 0 and out.is_file(), err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert {e["dataset"] for e in summary["evaluations"]} == {"validation"}  # 20 % held out by default
    assert summary["evaluations"][0]["n"] == 6  # 2 of each class's 8
    codes = [w["code"] for w in summary["warnings"]]
    assert codes == ["loss_diverged", "loss_at_chance", "worse_than_zero_shot", "recommended_alpha_zero"]
    for w in summary["warnings"]:
        assert f"warning [{w['code']}]: {w['message']}" in err and f"hint: {w['hint']}" in err
    assert "try a learning rate 10x lower (0.5 instead of 5)" in summary["warnings"][0]["hint"]
    chance = summary["warnings"][1]
    assert chance["num_classes"] == 3 and chance["final_loss"] >= 0.99 * chance["chance_loss"]


def test_zero_shot_classify_needs_labels(shapes_eval_dir, capsys):
    image = next((shapes_eval_dir / "red_circle").iterdir())
    status, _, err = saft_here(capsys, "classify", "--model", "saft-tiny", str(image))
    assert status == 2 and "labels are required" in err
    status, out, err = saft_here(capsys, "classify", "--model", "saft-tiny", "--labels", "cat,dog", "--json", str(image))
    assert status == 0, err
    assert len(json.loads(out.strip().splitlines()[-1])["results"][0]["predictions"]) == 2


def test_an_unreadable_image_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    status, _, err = saft_here(capsys, "classify", "--model", "saft-tiny", "--labels", "a,b", str(bad))
    assert status == 2 and f"cannot read image {bad}: cannot identify image file" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.5"], "argument --ratio: must be in (0, 1), got 1.5"),
        (["--model", "nope-model"], "unknown model 'nope-model'"),
        (["--epochs", "0"], "argument --epochs: must be in [1, 1000], got 0"),
        (["--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    ],
)
def test_bad_finetune_arguments_exit_2_with_message(shapes_dir, tmp_path, capsys, args, message):
    status, _, err = saft_here(capsys, "finetune", "--train", str(shapes_dir), "--out", str(tmp_path / "x.safetensors"), *args)
    assert status == 2
    assert message in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_dataset_exit_2(tmp_path, capsys):
    (tmp_path / "only" / "cls").mkdir(parents=True)
    status, _, err = saft_here(capsys, "finetune", "--train", str(tmp_path / "only"), "--out", str(tmp_path / "x.safetensors"))
    assert status == 2 and "no images found" in err

