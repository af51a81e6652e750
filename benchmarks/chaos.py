"""The chaos soak: a steady stream of small jobs through the production layout while random faults strike, then
a check, from the store and the files, that every job ended exactly once and every tenant was told.

1. A private Postgres and a private Redis (``benchmarks.servers``), ``saft migrate``, three tenants (``saft keys
   create``), two ``saft api`` processes and two ``saft worker`` processes, all on one data dir. Each tenant
   registers a webhook receiver: a real HTTP server in this process on 127.0.0.1 (``SAFT_WEBHOOK_ALLOW_PRIVATE``).
   Liveness settings are the fault tests' (heartbeat 0.5 s, stale after 5 s, a reaper pass every 0.5 s).
2. For ``--minutes``, each tenant keeps up to two jobs in flight (saft-tiny on an 18-image generated dataset, one
   epoch at batch 2, a snapshot after every step), submitting through the Python client with an
   ``Idempotency-Key`` and its retries, to either API process at random; when the client gives up (an outage
   longer than its retries), the same submission is sent again with the same key. Every HTTP status (or
   connection error) any request got is recorded.
3. Meanwhile, every 20-60 s (times ``--minutes``/10 when shorter than 10 minutes) one fault strikes, drawn at
   random from those not yet drawn in this round (so a short run still sees different kinds): kill -9 of a
   worker's process tree (one running a job when there is one; a new worker starts at once), kill -9 of an API
   process (restarted at once), Redis restarted without persistence, Redis stopped for 30 s, Postgres
   restarted, Postgres stopped for 15 s (the outages scaled like the interval).
4. Then the checks: every job in the store reached a final state within 2 minutes of the end of the last fault,
   and every submission's answer names one of them (no second job for one key); no job succeeded twice (its
   attempts are numbered once each, at most one "job succeeded" event, one checkpoint whose file exists, no
   other attempt's outputs); no orphan files in the data dir (job or dataset folders the store does not know,
   snapshots or staging left over); one webhook message per final job (one ``webhook-id``, the right event,
   every request signed: checked here with ``hmac`` directly) and every delivery row delivered; no 5xx other
   than 503, and 503 only while Postgres or Redis was down (or within 30 s of its return).

Run: ``python -m benchmarks.chaos [--minutes 10] [--seed 0] [--out DIR]``; writes ``DIR/chaos.json`` and
``DIR/chaos.md`` (default ``benchmarks/results``) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import PrivatePostgres, PrivateRedis, free_port

log = logging.getLogger("benchmarks.chaos")
ROOT = Path(__file__).resolve().parents[1]
TENANTS = ("alpha", "beta", "gamma")
FAULTS = ("kill_worker", "kill_api", "redis_restart", "redis_down", "postgres_restart", "postgres_down")
OUTAGES = {"redis_restart", "redis_down", "postgres_restart", "postgres_down"}  # the API may answer 503
FINAL_EVENTS = ["job.succeeded", "job.failed", "job.cancelled"]
FINAL = ("succeeded", "failed", "cancelled")
IN_FLIGHT = 2  # jobs each tenant keeps queued or running
SETTLE_S = 120.0  # every job final within this of the last fault's end
GRACE_503_S = 30.0  # a 503 this long after an outage ended still counts as during it
ENV = {
    "SAFT_HEARTBEAT_INTERVAL": "0.5",
    "SAFT_HEARTBEAT_TIMEOUT": "5",
    "SAFT_REAPER_INTERVAL": "0.5",
    "SAFT_REQUEUE_AFTER": "2",
    "SAFT_SNAPSHOT_INTERVAL": "0",  # a snapshot after every step: a killed job resumes
    "SAFT_DB_RETRY_SECONDS": "120",
    "SAFT_MAX_ACTIVE_JOBS": "20",
    "SAFT_PROGRESS_INTERVAL": "0.5",
    "SAFT_LOG_LEVEL": "INFO",
    "SAFT_WEBHOOK_ALLOW_PRIVATE": "1",
    "SAFT_WEBHOOK_RETRY_BASE": "0.5",
    "SAFT_WEBHOOK_POLL_INTERVAL": "0.2",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
}
JOB = {"model": "saft-tiny", "epochs": 1, "batch_size": 2}  # 9 steps: a few seconds
ID_SEGMENT = re.compile(r"/[a-z]+_[0-9a-f]{24}")


def saft(*args: str) -> list[str]:
    return [sys.executable, "-m", "saft_cli", *args]


def now() -> float:
    return time.monotonic()


# ------------------------------------------------------------------------------------------ processes
class Service:
    """One ``saft`` process in a session of its own (so kill -9 takes its whole tree), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        out = open(self.logs / f"{self.name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        out.write(f"--- start {self.starts} ---\n".encode())
        out.flush()
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        out.close()

    def kill9(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, n: int = 30) -> str:
        path = self.logs / f"{self.name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return f"--- {self.name} ---\n" + "\n".join(lines[-n:])


def run_checked(argv: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def wait_ready(url: str, service: Service, timeout: float = 180.0) -> None:
    deadline = now() + timeout
    while now() < deadline:
        assert service.popen is not None
        if service.popen.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.popen.returncode}\n{service.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{service.name} not ready after {timeout} s\n{service.tail()}")


# ------------------------------------------------------------------------------------------ recording
@dataclass
class Calls:
    """Every HTTP answer (or transport error) the clients got, with when, and the retries they made."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[tuple[float, str, str, str]] = field(default_factory=list)  # (answered, method, route, status)
    client_retries: int = 0
    resubmits: int = 0

    def add(self, t: float, method: str, path: str, status: str) -> None:
        with self.lock:
            self.seen.append((t, method, ID_SEGMENT.sub("/{id}", path), status))


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except Exception as e:
            self.calls.add(now(), request.method, request.url.path, type(e).__name__)
            raise
        # When the answer came: a request sent just before an outage may be answered 503 during it.
        self.calls.add(now(), request.method, request.url.path, str(response.status_code))
        return response


class RetryCounter(logging.Handler):
    """Counts the client's "...; retry n in s" warnings."""

    def __init__(self, calls: Calls) -> None:
        super().__init__(logging.WARNING)
        self.calls = calls

    def emit(self, record: logging.LogRecord) -> None:
        if "; retry " in record.getMessage():
            with self.calls.lock:
                self.calls.client_retries += 1


@dataclass
class Hook:
    t: float
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A tenant's webhook endpoint: answers 200 and keeps every request."""

    def __init__(self) -> None:
        self.got: list[Hook] = []
        lock = threading.Lock()
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the standard library's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    got.append(Hook(now(), {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed(secret: str, hook: Hook) -> bool:
    """Standard Webhooks, checked with hmac directly: one ``v1,`` signature is the base64 HMAC-SHA256 of
    ``id.timestamp.body`` keyed with the base64-decoded secret after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg = f"{hook.headers.get('webhook-id')}.{hook.headers.get('webhook-timestamp')}.".encode() + hook.body
    expected = "v1," + base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in hook.headers.get("webhook-signature", "").split(" "))


def job_of(hook: Hook) -> tuple[str | None, str | None]:
    """(job id, event type) of a webhook body."""
    try:
        body = json.loads(hook.body)
    except ValueError:
        return None, None
    return (body.get("data") or {}).get("job_id"), body.get("type")


# ------------------------------------------------------------------------------------------ the soak
@dataclass
class Tenant:
    name: str
    key: str = ""
    dataset: str = ""
    secret: str = ""
    receiver: Receiver | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # idempotency key -> job id
    unanswered: list[str] = field(default_factory=list)  # keys whose submission never got an answer
    refused: list[str] = field(default_factory=list)  # 4xx answers to a submission (code)


class Soak:
    def __init__(self, minutes: float, seed: int, work: Path) -> None:
        self.minutes, self.rng, self.work = minutes, random.Random(seed), work
        self.scale = min(1.0, minutes / 10)
        self.interval = (20 * self.scale, 60 * self.scale)
        self.redis_down_s, self.pg_down_s = 30 * self.scale, 15 * self.scale
        self.data_dir = work / "data"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.calls = Calls()
        self.tenants = {t: Tenant(t) for t in TENANTS}
        self.faults: list[dict[str, Any]] = []
        self.pg: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.apis: list[tuple[str, Service]] = []
        self.workers: list[Service] = []
        self.fault_lock = threading.Lock()  # the fault thread replaces services; the end waits for it

    # --- set-up ---------------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = now()
        self.pg, self.redis = PrivatePostgres(), PrivateRedis()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFT_")}
        self.env.update(ENV, SAFT_DATA_DIR=str(self.data_dir), SAFT_DATABASE_URL=self.pg.url,
                        SAFT_BROKER_URL=self.redis.url)
        run_checked(saft("migrate"), self.env)
        threads = [threading.Thread(target=self._key, args=(t,)) for t in self.tenants.values()]
        for th in threads:
            th.start()
        self.workers = [Service(f"worker{i}", saft("worker"), self.env, self.logs) for i in (1, 2)]
        for i in (1, 2):
            port = free_port()
            argv = saft("api", "--host", "127.0.0.1", "--port", str(port))
            self.apis.append((f"http://127.0.0.1:{port}", Service(f"api{i}", argv, self.env, self.logs)))
        for s in [*self.workers, *(s for _, s in self.apis)]:
            s.start()
        for th in threads:
            th.join()
        for url, s in self.apis:
            wait_ready(url, s)
        from saft_worlds.shapes import render_shapes

        for t in self.tenants.values():
            folder = render_shapes(self.work / "datasets" / t.name, per_class=6, seed=len(t.name))
            t.receiver = Receiver()
            with self.client(t, self.apis[0][0]) as c:
                t.dataset = c.datasets.upload(folder).id
                # the events that end a job: the check is one message per final job (job.warning, which some of
                # these one-epoch jobs earn, is not one of them)
                t.secret = c.webhooks.create(t.receiver.url, FINAL_EVENTS).secret
        self.setup_s = now() - t0
        log.info("stack ready in %.1f s", self.setup_s)

    def _key(self, tenant: Tenant) -> None:
        tenant.key = run_checked(saft("keys", "create", "--tenant", tenant.name), self.env).strip().splitlines()[-1]

    def client(self, tenant: Tenant, url: str) -> Any:
        from saft_client import Client, RetryPolicy

        return Client(url, tenant.key, timeout=30, transport=RecordingTransport(self.calls),
                      retry=RetryPolicy(max_retries=6, backoff=0.5, max_backoff=5))

    # --- the stream -----------------------------------------------------------------------------------
    def submitter(self, tenant: Tenant, until: float) -> None:
        from saft_client import APIError, SaftClientError

        clients = [self.client(tenant, url) for url, _ in self.apis]
        in_flight: set[str] = set()
        try:
            while now() < until:
                for job_id in list(in_flight):
                    with contextlib.suppress(SaftClientError):
                        if self.rng_choice(clients).jobs.get(job_id).status in FINAL:
                            in_flight.discard(job_id)
                if len(in_flight) < IN_FLIGHT:
                    key = uuid.uuid4().hex
                    while True:  # one submission: the client's retries, then the same key again
                        try:
                            job = self.rng_choice(clients).jobs.create(tenant.dataset, idempotency_key=key, **JOB)
                        except APIError as e:
                            if e.status < 500:
                                tenant.refused.append(e.code)
                                break
                        except SaftClientError:
                            pass
                        else:
                            tenant.submitted[key] = job.id
                            in_flight.add(job.id)
                            break
                        if now() > until + SETTLE_S:
                            tenant.unanswered.append(key)
                            break
                        with self.calls.lock:
                            self.calls.resubmits += 1
                        time.sleep(1.0)
                time.sleep(0.5)
        finally:
            for c in clients:
                c.close()

    def rng_choice(self, items: list[Any]) -> Any:
        return random.choice(items)  # the clients' threads: not the seeded fault sequence

    # --- the faults -----------------------------------------------------------------------------------
    def fault_loop(self, t0: float, until: float) -> None:
        bag: list[str] = []
        at = t0 + self.rng.uniform(*self.interval)
        while at < until:
            time.sleep(max(0.0, at - now()))
            if not bag:
                bag = list(FAULTS)
                self.rng.shuffle(bag)
            kind = bag.pop()
            start = now()
            with self.fault_lock:
                detail = getattr(self, kind)()
            end = now()
            self.faults.append({"kind": kind, "at_s": round(start - t0, 1), "took_s": round(end - start, 1),
                                "detail": detail, "start": start, "end": end})
            log.info("fault %-16s at %6.1f s (%s), %.1f s", kind, start - t0, detail, end - start)
            at = max(start + self.rng.uniform(*self.interval), end + 1.0)

    def kill_worker(self) -> str:
        """kill -9 of a worker's process group: one running a job when there is one (so that the job must
        resume elsewhere), else either."""
        busy = self.busy_workers()
        i = self.rng.choice(busy) if busy else self.rng.randrange(len(self.workers))
        self.workers[i].kill9()
        self.workers[i].start()
        return self.workers[i].name + (" (running a job)" if busy else " (idle)")

    def busy_workers(self) -> list[int]:
        """Indexes of the workers whose pool process is running a job (``jobs.worker`` is ``node/pid``)."""
        from sqlalchemy import text

        try:
            with self.engine().connect() as conn:
                pids = [w.rpartition("/")[2] for w in conn.execute(
                    text("SELECT worker FROM jobs WHERE status = 'running' AND worker IS NOT NULL")).scalars()]
        except Exception:  # the store is down: pick at random
            return []
        groups = set()
        for pid in pids:
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                groups.add(os.getpgid(int(pid)))
        return [i for i, w in enumerate(self.workers) if w.popen is not None and w.popen.pid in groups]

    def kill_api(self) -> str:
        _, api = self.apis[self.rng.randrange(len(self.apis))]
        api.kill9()
        api.start()
        return api.name

    def redis_restart(self) -> str:
        assert self.redis is not None
        self.redis.stop()
        self.redis.start()
        return "no persistence"

    def redis_down(self) -> str:
        assert self.redis is not None
        self.redis.stop()
        time.sleep(self.redis_down_s)
        self.redis.start()
        return f"{self.redis_down_s:.0f} s"

    def postgres_restart(self) -> str:
        assert self.pg is not None
        self.pg.stop()
        self.pg.start()
        return "fast shutdown"

    def postgres_down(self) -> str:
        assert self.pg is not None
        self.pg.stop()
        time.sleep(self.pg_down_s)
        self.pg.start()
        return f"{self.pg_down_s:.0f} s"

    # --- the run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        handler = RetryCounter(self.calls)
        client_log = logging.getLogger("saft_client")
        client_log.addHandler(handler)
        client_log.propagate = False  # counted, not printed: hundreds of "retry" lines
        t0 = now()
        until = t0 + self.minutes * 60
        threads = [threading.Thread(target=self.submitter, args=(t, until), daemon=True)
                   for t in self.tenants.values()]
        faults = threading.Thread(target=self.fault_loop, args=(t0, until), daemon=True)
        for th in [*threads, faults]:
            th.start()
        faults.join()
        for th in threads:
            th.join()
        client_log.removeHandler(handler)
        client_log.propagate = True
        stream_end = now()
        last_fault = max((f["end"] for f in self.faults), default=t0)
        for url, api in self.apis:  # a restarted API must be up before the checks read through it
            wait_ready(url, api)
        deadline = max(last_fault, stream_end) + SETTLE_S
        store = self.settle(deadline)
        hooks_deadline = now() + 60
        while now() < hooks_deadline and not self.all_told(store):
            time.sleep(0.5)
            store = self.read_store()
        return self.check(store, t0, last_fault, stream_end)

    # --- reading the store --------------------------------------------------------------------------
    def engine(self) -> Any:
        from sqlalchemy import create_engine

        if not hasattr(self, "_engine"):
            assert self.pg is not None
            self._engine = create_engine(self.pg.url)
        return self._engine

    def read_store(self) -> dict[str, Any]:
        from sqlalchemy import text

        with self.engine().connect() as conn:
            jobs = {r.id: dict(r._mapping) for r in conn.execute(text(
                "SELECT j.id, j.status, j.attempts, j.error_code, j.finished_at, t.name AS tenant "
                "FROM jobs j JOIN tenants t ON t.id = j.tenant_id"))}
            events = [dict(r._mapping) for r in conn.execute(text(
                "SELECT job_id, kind, message, data FROM job_events ORDER BY id"))]
            checkpoints = {r.job_id: r.path for r in conn.execute(text("SELECT job_id, path FROM checkpoints"))}
            datasets = {r.id: r.path for r in conn.execute(text("SELECT id, path FROM datasets"))}
            deliveries = [dict(r._mapping) for r in conn.execute(text(
                "SELECT id, job_id, event_type, status, attempts FROM webhook_deliveries"))]
            now_db = conn.execute(text("SELECT now()")).scalar_one()
        return {"jobs": jobs, "events": events, "checkpoints": checkpoints, "datasets": datasets,
                "deliveries": deliveries, "now": now_db}

    def settle(self, deadline: float) -> dict[str, Any]:
        while True:
            try:
                store = self.read_store()
            except Exception as e:  # Postgres just restarted: read again
                log.info("store not readable yet: %s", e)
                time.sleep(1.0)
                continue
            pending = [j for j in store["jobs"].values() if j["status"] not in FINAL]
            if not pending or now() > deadline:
                return store
            time.sleep(1.0)

    def all_told(self, store: dict[str, Any]) -> bool:
        told = {job_of(h)[0] for t in self.tenants.values() for h in (t.receiver.got if t.receiver else [])}
        final = {j for j, row in store["jobs"].items() if row["status"] in FINAL}
        pending = [d for d in store["deliveries"] if d["status"] == "pending"]
        return final <= told and not pending

    # --- the checks ---------------------------------------------------------------------------------
    def check(self, store: dict[str, Any], t0: float, last_fault: float, stream_end: float) -> dict[str, Any]:
        jobs, problems = store["jobs"], defaultdict(list)
        # 1. every job final, within SETTLE_S of the last fault; each submission answered with one job
        finished_after = []
        wall_offset = time.time() - now()
        for job_id, j in jobs.items():
            if j["status"] not in FINAL:
                problems["final"].append(f"{job_id} still {j['status']}")
            elif j["finished_at"] is not None:
                finished = j["finished_at"]
                if finished.tzinfo is None:  # stored as UTC without a zone
                    finished = finished.replace(tzinfo=datetime.UTC)
                finished_after.append(finished.timestamp() - (last_fault + wall_offset))
        max_after = max(finished_after, default=0.0)
        if max_after > SETTLE_S:
            problems["final"].append(f"a job ended {max_after:.0f} s after the last fault")
        answered = {j for t in self.tenants.values() for j in t.submitted.values()}
        for t in self.tenants.values():
            if t.unanswered:
                problems["answers"].append(f"{t.name}: {len(t.unanswered)} submissions never answered")
            if len(set(t.submitted.values())) != len(t.submitted):
                problems["answers"].append(f"{t.name}: two keys answered with one job")
        if unknown := set(jobs) - answered:
            problems["answers"].append(f"jobs no submission was answered with: {sorted(unknown)[:5]}")
        if lost := answered - set(jobs):
            problems["answers"].append(f"answered jobs missing from the store: {sorted(lost)[:5]}")

        # 2. none succeeded twice: attempts numbered once each, one success, one checkpoint, no other outputs
        by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in store["events"]:
            by_job[e["job_id"]].append(e)
        jobs_root = self.data_dir / "jobs"
        for job_id, j in jobs.items():
            evs = by_job[job_id]
            starts = [(e["data"] or {}).get("attempt") for e in evs
                      if e["kind"] == "status" and (e["data"] or {}).get("status") == "running"]
            successes = sum(e["message"] == "job succeeded" for e in evs)
            if len(starts) != len(set(starts)) or len(starts) != j["attempts"]:
                problems["once"].append(f"{job_id}: attempts {j['attempts']}, start events {starts}")
            if successes > 1 or (successes == 1) != (j["status"] == "succeeded"):
                problems["once"].append(f"{job_id} ({j['status']}): {successes} 'job succeeded' events")
            outputs = sorted(p.name for p in (jobs_root / job_id).iterdir()) if (jobs_root / job_id).is_dir() else []
            if j["status"] == "succeeded":
                ckpt = store["checkpoints"].get(job_id)
                if ckpt is None or not (self.data_dir / ckpt).is_file():
                    problems["once"].append(f"{job_id}: succeeded without its checkpoint file ({ckpt})")
                elif outputs != [Path(ckpt).relative_to(f"jobs/{job_id}").parts[0]]:
                    problems["once"].append(f"{job_id}: outputs {outputs}, checkpoint {ckpt}")
            elif outputs and j["status"] in FINAL:
                problems["orphans"].append(f"{job_id} ({j['status']}): left {outputs}")
        # 3. no orphans
        for folder, known in (("jobs", set(jobs)), ("datasets", set(store["datasets"]))):
            root = self.data_dir / folder
            for p in sorted(root.iterdir()) if root.is_dir() else []:
                if p.name not in known:
                    problems["orphans"].append(f"{folder}/{p.name}: not in the store")
        for folder in ("staging", "uploads"):
            root = self.data_dir / folder
            if root.is_dir() and (left := sorted(p.name for p in root.iterdir())):
                problems["orphans"].append(f"{folder}: {left[:5]}")

        # 4. webhooks: one message per final job, the right event, every request signed
        hooks = redelivered = 0
        for t in self.tenants.values():
            assert t.receiver is not None
            ids: dict[str, set[str]] = defaultdict(set)
            for h in t.receiver.got:
                hooks += 1
                job_id, event = job_of(h)
                if not signed(t.secret, h):
                    problems["webhooks"].append(f"{t.name}: a bad signature on {h.headers.get('webhook-id')}")
                if job_id not in jobs or jobs[job_id]["tenant"] != t.name:
                    problems["webhooks"].append(f"{t.name}: a message about {job_id}, not its job")
                    continue
                if event != f"job.{jobs[job_id]['status']}":
                    problems["webhooks"].append(f"{job_id}: {event}, but the job is {jobs[job_id]['status']}")
                ids[job_id].add(h.headers.get("webhook-id", ""))
            redelivered += sum(1 for _ in t.receiver.got) - sum(len(v) for v in ids.values())
            for job_id, j in jobs.items():
                if j["tenant"] == t.name and j["status"] in FINAL and len(ids[job_id]) != 1:
                    problems["webhooks"].append(f"{job_id}: {len(ids[job_id])} distinct messages")
        per_job = Counter(d["job_id"] for d in store["deliveries"])
        for d in store["deliveries"]:
            if d["status"] != "delivered":
                problems["webhooks"].append(f"delivery {d['id']} ({d['job_id']}): {d['status']}")
        if doubled := [j for j, n in per_job.items() if n != 1]:
            problems["webhooks"].append(f"jobs with several delivery rows: {doubled[:5]}")

        # 5. HTTP: no 5xx but 503, and 503 only during an outage
        windows = [(f["start"], f["end"] + GRACE_503_S) for f in self.faults if f["kind"] in OUTAGES]
        statuses = Counter(s for _, _, _, s in self.calls.seen)
        for t, method, route, s in self.calls.seen:
            if s.isdigit() and int(s) >= 500 and s != "503":
                problems["http"].append(f"{s} on {method} {route} at {t - t0:.1f} s")
            elif s == "503" and not any(a <= t <= b for a, b in windows):
                problems["http"].append(f"503 on {method} {route} at {t - t0:.1f} s, outside any outage")

        checks = {name: {"ok": not problems[name], "problems": problems[name][:20], "count": len(problems[name])}
                  for name in ("final", "answers", "once", "orphans", "webhooks", "http")}
        return {
            "minutes": self.minutes,
            "setup_s": round(self.setup_s, 1),
            "stream_s": round(stream_end - t0, 1),
            "fault_interval_s": [round(x, 1) for x in self.interval],
            "outages_s": {"redis_down": round(self.redis_down_s, 1), "postgres_down": round(self.pg_down_s, 1)},
            "jobs": len(jobs),
            "jobs_by_status": dict(Counter(j["status"] for j in jobs.values())),
            "jobs_by_tenant": dict(Counter(j["tenant"] for j in jobs.values())),
            "errors_by_code": dict(Counter(j["error_code"] for j in jobs.values() if j["error_code"])),
            "attempts": dict(Counter(j["attempts"] for j in jobs.values())),
            "faults": [{k: v for k, v in f.items() if k not in ("start", "end")} for f in self.faults],
            "faults_by_kind": dict(Counter(f["kind"] for f in self.faults)),
            "http_statuses": dict(sorted(statuses.items())),
            "requests": len(self.calls.seen),
            "client_retries": self.calls.client_retries,
            "resubmits": self.calls.resubmits,
            "refused": {t.name: dict(Counter(t.refused)) for t in self.tenants.values() if t.refused},
            "webhook_requests": hooks,
            "webhook_redelivered": redelivered,
            "deliveries": len(store["deliveries"]),
            "max_s_to_final_after_last_fault": round(max_after, 1),
            "checks": checks,
            "ok": all(c["ok"] for c in checks.values()),
        }

    # --- tear-down ----------------------------------------------------------------------------------
    def close(self) -> None:
        for s in [*(s for _, s in self.apis), *self.workers]:
            s.stop()
        for t in self.tenants.values():
            if t.receiver:
                t.receiver.close()
        if hasattr(self, "_engine"):
            self._engine.dispose()
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.destroy()

    def logs_tail(self) -> str:
        return "\n".join(s.tail() for s in [*(s for _, s in self.apis), *self.workers])


# ------------------------------------------------------------------------------------------ the report
def report(r: dict[str, Any]) -> str:
    ok = lambda c: "pass" if c["ok"] else f"**FAIL** ({c['count']})"  # noqa: E731
    lines = [
        f"# Chaos soak: {r['minutes']:g} minutes",
        "",
        f"Run {r['date']} with `python -m benchmarks.chaos --minutes {r['minutes']:g} --seed {r['seed']}` on "
        f"{r['machine']}. {r['note']}".rstrip(),
        "",
        "Private Postgres and Redis, two `saft api` and two `saft worker` processes; three tenants, each keeping "
        f"{IN_FLIGHT} saft-tiny jobs (18 generated images, 1 epoch at batch 2) in flight through the Python client, each "
        "with a webhook receiver. A fault every "
        f"{r['fault_interval_s'][0]:g}-{r['fault_interval_s'][1]:g} s; Redis down for "
        f"{r['outages_s']['redis_down']:g} s, Postgres down for {r['outages_s']['postgres_down']:g} s.",
        "",
        f"**Result: {'all checks passed' if r['ok'] else 'a check FAILED'}.**",
        "",
        "| check | result |",
        "|---|---|",
        f"| every job final within {SETTLE_S:.0f} s of the last fault | {ok(r['checks']['final'])} |",
        f"| each submission answered with one job, no job unanswered | {ok(r['checks']['answers'])} |",
        f"| no job succeeded twice (attempts, events, outputs) | {ok(r['checks']['once'])} |",
        f"| no orphan files in the data dir | {ok(r['checks']['orphans'])} |",
        f"| one signed webhook message per final job | {ok(r['checks']['webhooks'])} |",
        f"| no 5xx but 503, and 503 only during outages | {ok(r['checks']['http'])} |",
        "",
        "| count | value |",
        "|---|---|",
        f"| jobs | {r['jobs']} ({', '.join(f'{k} {v}' for k, v in sorted(r['jobs_by_status'].items()))}) |",
        f"| failed jobs by code | {', '.join(f'{k} {v}' for k, v in r['errors_by_code'].items()) or '-'} |",
        f"| jobs by attempts | {', '.join(f'{k}: {v}' for k, v in sorted(r['attempts'].items()))} |",
        f"| faults | {len(r['faults'])} ({', '.join(f'{k} {v}' for k, v in sorted(r['faults_by_kind'].items()))}) |",
        f"| HTTP requests | {r['requests']} ({', '.join(f'{k} {v}' for k, v in r['http_statuses'].items())}) |",
        f"| client retries / resubmissions with the same key | {r['client_retries']} / {r['resubmits']} |",
        f"| webhook requests (redelivered with the same id) | {r['webhook_requests']} ({r['webhook_redelivered']}) |",
        f"| delivery rows | {r['deliveries']} |",
        f"| max time to final after the last fault | {r['max_s_to_final_after_last_fault']:g} s |",
        f"| set-up / stream | {r['setup_s']:g} s / {r['stream_s']:g} s |",
        "",
        "Faults, in order:",
        "",
        "| at (s) | fault | took (s) | detail |",
        "|---|---|---|---|",
        *(f"| {f['at_s']:g} | {f['kind']} | {f['took_s']:g} | {f['detail']} |" for f in r["faults"]),
    ]
    failed = [(k, c) for k, c in r["checks"].items() if not c["ok"]]
    if failed:
        lines += ["", "Problems:", ""]
        for name, c in failed:
            lines += [f"- {name}: {p}" for p in c["problems"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long jobs stream and faults strike")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault sequence")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None, help="data dir and logs (default: a temporary folder)")
    p.add_argument("--note", default="", help="a sentence for the report (e.g. what else the machine ran)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="saft-chaos-"))
    soak = Soak(args.minutes, args.seed, work)
    try:
        soak.start()
        result = soak.run()
    except BaseException:
        log.error("the soak stopped early; the processes' last lines:\n%s", soak.logs_tail())
        raise
    finally:
        soak.close()
    result.update(seed=args.seed, date=time.strftime("%Y-%m-%d"), note=args.note,
                  machine=f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, "
                          f"Python {platform.python_version()}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "chaos.md").write_text(report(result))
    print(report(result))
    if not result["ok"]:
        print(soak.logs_tail())
    if args.work is None and result["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
