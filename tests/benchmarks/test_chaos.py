"""The chaos soak in one minute: the same stack, stream and checks as ``make bench-chaos``, with the fault
interval scaled down so that several different faults strike (one of each kind before any repeats)."""

import json
from pathlib import Path

import pytest

from benchmarks import chaos
from benchmarks.servers import ServerUnavailable


@pytest.mark.slow  # about a minute on 2 cores: 20 s of start-up, 36 s of stream and faults, the drain
def test_a_short_soak_ends_every_job_once_and_tells_every_tenant(tmp_path: Path) -> None:
    try:
        rc = chaos.main(["--minutes", "0.6", "--seed", "1", "--out", str(tmp_path), "--work", str(tmp_path / "w")])
    except ServerUnavailable as e:
        pytest.skip(str(e))
    result = json.loads((tmp_path / "chaos.json").read_text())
    failed = {k: c["problems"] for k, c in result["checks"].items() if not c["ok"]}
    assert rc == 0 and result["ok"] and not failed, failed
    assert len(result["faults_by_kind"]) >= 3, result["faults"]
    assert result["jobs"] > 0 and result["jobs_by_status"].get("succeeded", 0) > 0, result["jobs_by_status"]
    assert result["webhook_requests"] >= result["jobs"]
    assert "all checks passed" in (tmp_path / "chaos.md").read_text()
