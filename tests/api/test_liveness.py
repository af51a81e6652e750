"""Fault tests with real processes: a worker killed as a whole, Redis restarted without persistence, Postgres
stopped mid-job, a crashed ``saft serve``, and a quota raced by concurrent clients.

The stack here has its own Postgres cluster and its own Redis server (both on free ports, in temporary
folders), so stopping them does not disturb anything else. Liveness settings are scaled down (heartbeat every
0.5 s, stale after 5 s, a reaper pass every 0.5 s, a snapshot after every step) so each fault resolves in seconds;
the printed timings are from fault to the job running again and to its end.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from safetensors.torch import load as load_safetensors

from benchmarks.servers import PrivatePostgres, PrivateRedis, ServerUnavailable
from saft_service.queue import job_id_of
from tests.fixtures.stack import (
    REPO,
    Proc,
    Stack,
    alive,
    base_env,
    children,
    create_key,
    free_port,
    saft,
    serve_key,
    wait_for_job,
    wait_ready,
    wait_until,
    zip_dir,
)

T = TypeVar("T")

LIVENESS = {
    "SAFT_HEARTBEAT_INTERVAL": "0.5",
    "SAFT_HEARTBEAT_TIMEOUT": "5",
    "SAFT_REAPER_INTERVAL": "0.5",
    "SAFT_REQUEUE_AFTER": "2",
    "SAFT_SNAPSHOT_INTERVAL": "0",
    "SAFT_DB_RETRY_SECONDS": "120",
    "SAFT_MAX_ACTIVE_JOBS": "5",
}
# 72 training steps (every image: no validation split): long enough to be cut off mid-training, short enough for
# the suite.
LONG_JOB = {"hyperparameters": {"epochs": 8, "batch_size": 2, "seed": 3}, "validation_fraction": 0.0}


def _private(server: type[T]) -> T:
    try:
        return server()
    except ServerUnavailable as e:
        pytest.skip(f"{e} for the fault tests")


@dataclass
class FaultStack:
    stack: Stack
    pg: PrivatePostgres
    redis: PrivateRedis

    def worker(self) -> Proc:
        return next(p for p in self.stack.procs if p.name == "worker" and p.popen.poll() is None)

    def start_worker(self) -> Proc:
        proc = Proc.start("worker", saft("worker"), self.stack.env)
        self.stack.procs.append(proc)
        return proc

    def kill_worker(self) -> None:
        """kill -9 of the worker's whole process group: main process, pool child, loaders."""
        for p in self.stack.procs:
            if p.name == "worker" and p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    pg, rd = _private(PrivatePostgres), None
    procs: list[Proc] = []
    try:
        rd = _private(PrivateRedis)
        data_dir = tmp_path_factory.mktemp("fault-data")
        env = base_env(data_dir, SAFT_DATABASE_URL=pg.url, SAFT_BROKER_URL=rd.url, **LIVENESS)
        migrate = subprocess.run(saft("migrate"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        keys = {"alpha": create_key(env, "alpha")}
        port = free_port()
        procs += [
            Proc.start("worker", saft("worker"), env),
            Proc.start("api", saft("api", "--host", "127.0.0.1", "--port", str(port)), env),
        ]
        stack = Stack("fault", f"http://127.0.0.1:{port}", data_dir, keys, procs, env)
        wait_ready(stack)
        yield FaultStack(stack, pg, rd)
    finally:
        for p in procs:
            p.stop()
        if rd:
            rd.stop()
        pg.destroy()


@pytest.fixture(scope="module")
def fault_dataset(fault: FaultStack, shapes_dir: Path) -> str:
    with fault.stack.client() as c:
        r = c.post("/v1/datasets", data={"name": "shapes"}, files={"file": ("s.zip", zip_dir(shapes_dir))})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def events(c: httpx.Client, job_id: str) -> list[dict]:
    return c.get(f"/v1/jobs/{job_id}/events").json()["data"]


def checkpoint_tensors(c: httpx.Client, job_id: str) -> dict:
    r = c.get(f"/v1/jobs/{job_id}/checkpoint")
    assert r.status_code == 200, r.text
    return load_safetensors(r.content)


def training_step(c: httpx.Client, job_id: str, at_least: int, timeout: float = 120) -> int:
    def reached() -> int | None:
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        step = job["progress"]["step"] if job["stage"] == "training" else 0
        return step if step >= at_least else None

    step = wait_until(reached, timeout=timeout, interval=0.1)
    assert step, f"job {job_id} never reached training step {at_least}"
    return step


def test_a_worker_killed_as_a_whole_resumes_from_its_snapshot_on_a_new_worker(
    fault: FaultStack, fault_dataset: str
) -> None:
    with fault.stack.client() as c:
        body = {"dataset_id": fault_dataset, **LONG_JOB}
        whole = c.post("/v1/jobs", json=body).json()
        assert wait_for_job(c, whole["id"], until={"succeeded", "failed"}, timeout=240)["status"] == "succeeded"

        job = c.post("/v1/jobs", json=body).json()
        step = training_step(c, job["id"], at_least=10)
        fault.kill_worker()
        killed = time.monotonic()
        # No worker at all: the job is still "running" until the reaper finds its heartbeat stale.
        requeued = wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued", timeout=30)
        assert requeued, fault.stack.logs()
        to_queued = time.monotonic() - killed
        fault.start_worker()
        running = wait_until(lambda: c.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", timeout=60)
        to_running = time.monotonic() - killed
        done = wait_for_job(c, job["id"], until={"succeeded", "failed", "cancelled"}, timeout=240)
        to_done = time.monotonic() - killed
        assert running and done["status"] == "succeeded", f"{done}\n{fault.stack.logs()}"
        print(f"\nkill -9 of the worker at step {step}: requeued after {to_queued:.1f} s, running again after "
              f"{to_running:.1f} s (incl. the new worker's start), succeeded after {to_done:.1f} s")
        assert done["attempts"] == 2
        log = events(c, job["id"])
        resumed = [e["message"] for e in log if e["message"].startswith("resumed training from its snapshot")]
        assert len(resumed) == 1 and int(resumed[0].split("step ")[1].split()[0]) >= step - 1, resumed
        assert sum(e["message"] == "job succeeded" for e in log) == 1  # exactly once
        # The resumed job's checkpoint is the uninterrupted job's, tensor for tensor.
        a, b = checkpoint_tensors(c, whole["id"]), checkpoint_tensors(c, job["id"])
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not list((fault.stack.data_dir / "jobs" / job["id"]).glob("resume")), "snapshots left behind"


def test_jobs_queued_when_redis_restarts_without_persistence_all_run(fault: FaultStack, fault_dataset: str) -> None:
    import redis

    fault.kill_worker()  # nobody consumes: the messages wait in Redis
    queue = fault.stack.env.get("SAFT_QUEUE_NAME", "saft-jobs")
    with fault.stack.client() as c:
        ids = [c.post("/v1/jobs", json={"dataset_id": fault_dataset, "hyperparameters": {"epochs": 1}}).json()["id"]
               for _ in range(3)]
        # The dispatch window: one of the three in the broker, two in the store (beside it, at most a stale
        # duplicate of an earlier test's finished job, which the reaper may re-send while a worker starts it).
        held = [job_id_of(m) for m in redis.Redis(port=fault.redis.port).lrange(queue, 0, -1)]
        assert [j for j in held if j in ids] == ids[:1], (ids, held)
        fault.redis.stop()
        fault.redis.start()
        restarted = time.monotonic()
        assert redis.Redis(port=fault.redis.port).llen(queue) == 0  # every message is gone
        fault.start_worker()
        done = [wait_for_job(c, i, until={"succeeded", "failed", "cancelled"}, timeout=240) for i in ids]
        took = time.monotonic() - restarted
        assert [d["status"] for d in done] == ["succeeded"] * 3, fault.stack.logs()
        print(f"\n3 jobs whose messages Redis lost: all succeeded {took:.1f} s after the restart")
        for i in ids:
            assert sum(e["message"] == "job started" for e in events(c, i)) == 1  # each ran once


def test_postgres_stopped_mid_job_answers_503_and_the_job_still_succeeds(fault: FaultStack, fault_dataset: str) -> None:
    with fault.stack.client() as c:
        job = c.post("/v1/jobs", json={"dataset_id": fault_dataset, **LONG_JOB}).json()
        training_step(c, job["id"], at_least=10)
        worker = fault.worker()

        def missed_beats() -> int:
            return sum("heartbeat not written" in ln for ln in worker.lines)

        missed_before = missed_beats()
        fault.pg.stop()
        stopped = time.monotonic()
        try:
            r = c.post("/v1/jobs", json={"dataset_id": fault_dataset})
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "database_unavailable" and int(r.headers["retry-after"]) > 0
            r = c.get(f"/v1/jobs/{job['id']}")
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable"
            # The outage lasts 15 s (three times the heartbeat timeout) and until the worker has logged a missed
            # heartbeat: it did run into the outage mid-job, not only the API.
            felt = wait_until(
                lambda: missed_beats() > missed_before and time.monotonic() - stopped >= 15, timeout=120, interval=0.2
            )
            assert felt, f"the worker never missed a heartbeat while Postgres was down\n{worker.tail()}"
        finally:
            fault.pg.start()
        done = wait_for_job(c, job["id"], until={"succeeded", "failed", "cancelled"}, timeout=240)
        took = time.monotonic() - stopped
        assert done["status"] == "succeeded", f"{done}\n{fault.stack.logs()}"
        print(f"\nPostgres down for 15 s mid-job: the job succeeded {took:.1f} s after the stop "
              f"(attempts: {done['attempts']})")
        assert sum(e["message"] == "job succeeded" for e in events(c, job["id"])) == 1


def test_the_quota_holds_under_concurrent_submissions(fault: FaultStack, fault_dataset: str) -> None:
    fault.kill_worker()  # jobs stay queued, so each one holds its slot
    try:
        with fault.stack.client() as c:
            for j in c.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]:
                c.post(f"/v1/jobs/{j['id']}/cancel")

            def submit(_: int) -> int:
                with fault.stack.client() as own:
                    return own.post("/v1/jobs", json={"dataset_id": fault_dataset}).status_code

            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(submit, range(12)))
            assert sorted(codes) == [201] * 5 + [429] * 7, codes
            queued = c.get("/v1/jobs", params={"status": "queued", "limit": 100}).json()["data"]
            assert len(queued) == 5
            for j in queued:
                assert c.post(f"/v1/jobs/{j['id']}/cancel").json()["status"] == "cancelled"
    finally:
        fault.start_worker()


def test_a_job_cut_off_by_a_crashed_saft_serve_resumes_at_the_next_start(
    tmp_path: Path, shapes_dir: Path
) -> None:
    """The embedded default: `saft serve` and its worker killed with -9, then started again on the same data."""
    data_dir = tmp_path / "var"
    env = base_env(data_dir, **LIVENESS)
    port = free_port()

    def serve() -> Stack:
        proc = Proc.start("serve", saft("serve", "--port", str(port)), env)
        stack = Stack("embedded", f"http://127.0.0.1:{port}", data_dir, {}, [proc], env)
        wait_ready(stack)
        return stack

    first = serve()
    key = serve_key(first.procs[0])
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=first.base_url, headers=headers, timeout=60) as c:
        ds = c.post("/v1/datasets", data={"name": "s"}, files={"file": ("s.zip", zip_dir(shapes_dir))}).json()
        job = c.post("/v1/jobs", json={"dataset_id": ds["id"], **LONG_JOB}).json()
        step = training_step(c, job["id"], at_least=10)
    serve_pid = first.procs[0].popen.pid
    worker_pids = children(serve_pid)
    tree = worker_pids + [pid for w in worker_pids for pid in children(w)]  # the worker and its pool process
    assert len(tree) >= 2, tree
    os.kill(serve_pid, signal.SIGKILL)  # `saft serve` alone, as a crash or an OOM kill ends it: no clean-up
    first.procs[0].popen.wait()
    crashed = time.monotonic()
    # What it started ends with it (the kernel's parent-death signal), so a restart finds no old worker.
    gone = wait_until(lambda: not any(alive(pid) for pid in tree), timeout=10)
    for pid in tree:  # whatever is left (a failure) must not outlive the test
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert gone, f"still running after saft serve was killed: {[p for p in tree if alive(p)]}"

    second = serve()
    try:
        with httpx.Client(base_url=second.base_url, headers=headers, timeout=60) as c:
            done = wait_for_job(c, job["id"], until={"succeeded", "failed", "cancelled"}, timeout=240)
            took = time.monotonic() - crashed
            assert done["status"] == "succeeded", f"{done}\n{second.logs()}"
            assert done["attempts"] == 2
            log = [e["message"] for e in events(c, job["id"])]
            assert any(m.startswith("the service stopped while this job was running") for m in log), log
            resumed = [m for m in log if m.startswith("resumed training from its snapshot")]
            assert len(resumed) == 1 and int(resumed[0].split("step ")[1].split()[0]) >= step - 1, resumed
        print(f"\nsaft serve killed at step {step}: the job succeeded {took:.1f} s later, after a restart")
    finally:
        second.procs[0].stop()
