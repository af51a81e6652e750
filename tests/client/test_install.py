"""The client package installs into a fresh virtual environment without torch and talks to the service."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from tests.fixtures.stack import REPO, Stack

pytestmark = [pytest.mark.service, pytest.mark.slow]

# pip's own words when the package index cannot be reached (the only reason to skip).
OFFLINE = ("Could not find a version that satisfies", "Failed to establish a new connection", "Network is unreachable")

SCRIPT = """
import sys
from saft_client import Client, NotFound
c = Client()  # SAFT_URL and SAFT_API_KEY
names = [m.name for m in c.models()]
try:
    c.jobs.get("job_doesnotexist")
except NotFound as e:
    code = e.code
print("saft-tiny" in names, code, "torch" in sys.modules)
"""


def test_client_installs_without_torch(embedded_stack: Stack, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO / "clients" / "python")],
        capture_output=True, text=True, timeout=600,
    )
    if pip.returncode != 0 and any(s in pip.stderr for s in OFFLINE):
        pytest.skip(f"the package index is not reachable: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].split(" @ ")[0].lower().replace("_", "-") for line in freeze.splitlines()}
    assert "saft-client" in installed and "httpx" in installed and "pydantic" in installed
    assert not installed & {"torch", "open-clip-torch", "fastapi", "saft-service"}, installed
    env = {"SAFT_URL": embedded_stack.base_url, "SAFT_API_KEY": embedded_stack.keys["alpha"], "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(py), "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "job_not_found", "False"], out.stdout
