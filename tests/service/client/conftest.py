"""Tests of the Python client (clients/python) and the ``saft`` remote commands built on it.

``remote_run``: one small job per stack, driven through the client and the remote commands at once; the
client and the CLI test modules both read it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from saft_client import Client, Dataset, Job, JobEvent

from ..conftest import REPO, Proc, Stack, saft
from .faults import FaultTransport

CLIENT_SRC = REPO / "clients" / "python"


def cli_env(stack: Stack, tenant: str = "alpha") -> dict[str, str]:
    """The environment of a ``saft`` remote command: URL and key as a user sets them. saft_client is put on
    the path because the tests' environment is shared and not reinstalled per branch (`make install` makes
    it importable in a fresh clone)."""
    env = dict(stack.env)
    env.update(SAFT_URL=stack.base_url, SAFT_API_KEY=stack.keys[tenant])
    env["PYTHONPATH"] = os.pathsep.join([str(CLIENT_SRC), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(
    stack: Stack, *args: str, tenant: str = "alpha", timeout: float = 300, env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """``saft ARGS`` as a user runs it against ``stack``, in ``cwd``; ``env`` adds to (or overrides) its
    environment."""
    return subprocess.run(
        saft(*args), cwd=cwd, env={**cli_env(stack, tenant), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )


def cli_json(stack: Stack, *args: str, cwd: Path = REPO) -> dict | list:
    out = run_cli(stack, *args, "--json", cwd=cwd)
    assert out.returncode == 0, f"saft {' '.join(args)} exited {out.returncode}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class RemoteRun:
    stack: Stack
    dataset: Dataset  # uploaded by `saft datasets upload DIR`
    eval_dataset: Dataset  # uploaded by client.datasets.upload(ARCHIVE)
    upload_progress: list[tuple[int, int | None]]
    job: Job  # final state, from client.jobs.wait
    events: list[JobEvent]  # what wait()'s on_event saw, through a stream cut twice
    stream_requests: int
    follow: subprocess.CompletedProcess[str] | None = None
    follow_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def client(self, tenant: str = "alpha", **kw: object) -> Client:
        return Client(self.stack.base_url, self.stack.keys[tenant], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def remote_run(stack: Stack, shapes_dir: Path, shifted_tar_gz: bytes, tmp_path_factory: pytest.TempPathFactory) -> RemoteRun:
    tmp = tmp_path_factory.mktemp("remote")
    # 1. The training set through the CLI: a folder, zipped on the fly.
    ds = Dataset.model_validate(cli_json(stack, "datasets", "upload", str(shapes_dir), "--name", "shapes-cli"))
    # 2. The eval set through the client: an archive, with a progress callback.
    archive = tmp / "shifted.tar.gz"
    archive.write_bytes(shifted_tar_gz)
    progress: list[tuple[int, int | None]] = []
    with Client(stack.base_url, stack.keys["alpha"]) as c:
        ev = c.datasets.upload(archive, progress=lambda done, total: progress.append((done, total)))
        # 3. The job, with flat options sorted into method and hyperparameters by the client.
        job = c.jobs.create(
            ds, ratio=0.01, epochs=2, learning_rate=0.001, batch_size=6, seed=0,
            validation_fraction=0.34, eval_datasets=[ev], metadata={"purpose": "client-test"}, priority="high",
        )
    # 4. `saft jobs follow` and client.jobs.wait follow it at the same time; the client's event stream is cut
    #    mid-stream twice (after 700 and 300 bytes: inside an event) and must resume without gap or repeat.
    t0 = time.monotonic()
    follow = Proc.start("follow", saft("jobs", "follow", job.id), cli_env(stack))
    transport = FaultTransport(cut={"/events/stream": [700, 300]})
    events: list[JobEvent] = []
    with Client(stack.base_url, stack.keys["alpha"], transport=transport) as c:
        final = c.jobs.wait(job, on_event=events.append, timeout=600)
    follow.popen.wait(timeout=120)
    seconds = time.monotonic() - t0
    result = subprocess.CompletedProcess(follow.popen.args, follow.popen.returncode, "\n".join(follow.lines), "")
    assert final.status == "succeeded", f"{final.error}\n{stack.logs()}"
    print(f"[{stack.kind}] remote job: {seconds:.1f} s from create to succeeded (client wait + CLI follow)")
    streams = sum(1 for m, p, _ in transport.seen if p.endswith("/events/stream"))
    return RemoteRun(stack, ds, ev, progress, final, events, streams, result, seconds)
