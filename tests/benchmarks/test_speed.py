"""The speed benchmark's smoke run: every variant runs in its own process and the report has every field."""

import json

import pytest

from benchmarks.speed import VARIANTS, main


@pytest.mark.slow  # a process per variant, each timing its steps
def test_quick_speed_benchmark_reports_every_variant(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "speed.json").read_text())
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
    assert res["crossover"]["rows"] and res["selection"]["saft-tiny (scored)"]["select_s"] > 0
    md = (tmp_path / "speed.md").read_text()
    assert "| saft-sparse |" in md and "shared" in md and md in capsys.readouterr().out
