"""The data-loading benchmark runs and reports every worker count against the in-process baseline."""

import json

from benchmarks.loader import main


def test_loader_benchmark_reports_each_worker_count(tmp_path, capsys):
    out = tmp_path / "loader.json"
    assert main(["--workers", "0,2", "--images-per-class", "2", "--size", "64", "--epochs", "2",
                 "--batch-size", "8", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == [0, 2]
    assert all(r["images"] == 24 and len(r["epoch_seconds"]) == 2 and r["images_per_second"] > 0 for r in rows)
    assert rows[0]["speedup_vs_0"] == 1.0
    table = capsys.readouterr().out
    assert "| 0 |" in table and "| 2 |" in table
