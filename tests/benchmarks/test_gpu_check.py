"""The GPU check's CPU rehearsal (``scripts/gpu_check.sh --cpu``): every step of the GPU run, at tiny sizes.

It runs the speed benchmark the way CUDA runs it (every variant in one process, the profiler on), one job
through ``saft serve``, and the gpu tests on the CPU; the reports must have every field the GPU run fills.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.speed import VARIANTS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # three steps of a few processes each: about two minutes on 2 cores
def test_the_gpu_check_rehearses_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + log[-4000:]
    for step in ("speed", "e2e", "tests"):
        assert f"=== {step}: exit 0" in log, log[-4000:]
    assert "gpu check (cpu): passed" in proc.stdout

    # 1. speed, every variant in one process as on CUDA
    res = json.loads((out / "speed.json").read_text())
    assert res["device"] == "cpu" and res["machine"]["device"] == "cpu"
    scored = res["models"]["saft-tiny"]["masks"]["scored"]
    assert set(scored["variants"]) == set(VARIANTS)
    for name, v in scored["variants"].items():
        assert v["step_s"] > 0 and v["peak_mb"] > 0 and v["steps_timed"] == res["steps"] * res["rounds"], name
    vs = scored["variants"]
    assert vs["full"]["ratio_to_full"] == 1.0
    assert vs["saft-sparse"]["optimizer_bytes"] == vs["saft-dense"]["optimizer_bytes"] == 8 * scored["k"]
    assert vs["full"]["optimizer_bytes"] == 8 * res["models"]["saft-tiny"]["num_params"]
    assert vs["floor"]["optimizer_bytes"] == 0 and vs["lora"]["optimizer_bytes"] > vs["saft-sparse"]["optimizer_bytes"]
    assert vs["saft-sparse"]["fallbacks"] == [] and vs["saft-sparse"]["paths"]
    assert res["crossover"]["rows"] and res["crossover"]["dtype"] == "float32"
    assert res["selection"]["saft-tiny (scored)"]["select_s"] > 0
    md = (out / "speed.md").read_text()
    assert "| saft-sparse |" in md and "vs SAFT dense" in md
    assert "_SparseLinearBackward" in (out / "profile-saft-tiny.txt").read_text()  # the engine's own op, timed

    # 2. one job through the service
    e2e = json.loads((out / "gpu-e2e.json").read_text())
    assert e2e["device"] == "cpu" and e2e["plan"]["model"] == "saft-tiny"
    assert {"loading", "scoring", "masking", "training", "evaluating", "saving"} <= set(e2e["stages_s"])
    assert 0 < e2e["train_images"] < e2e["images"] and e2e["training_images_per_s"] > 0
    assert e2e["gpu_util"]["samples_training"] == 0 and e2e["evaluations"]
    assert "images/s" in (out / "gpu-e2e.md").read_text()

    # 3. the gpu tests, on the CPU: all ran but the out-of-memory one
    suite = ET.parse(out / "gpu-tests.xml").getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", 0)) == 4 and int(suite.get("failures", 1)) == 0 and int(suite.get("errors", 1)) == 0
    assert int(suite.get("skipped", 0)) == 1
