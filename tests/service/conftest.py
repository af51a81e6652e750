"""Fixtures for the service tests: real processes on free ports, real Postgres and Redis.

- ``pg_stack``: ``saft migrate``, two ``saft keys create``, a ``saft worker`` (Celery, prefork) and ``saft api``
  (uvicorn), each a subprocess, on a fresh Postgres database and a private Redis queue. Skipped, saying why,
  only when Postgres or Redis cannot be reached.
- ``embedded_stack``: ``saft serve`` (API + worker) on the embedded default (SQLite + SQL broker file), with
  the key read from what it prints, exactly as the README tells a user.

Both use small upload limits so the limit tests stay small.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from saft_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

# Limits the tests run under (small so that going over them is cheap).
LIMITS = {
    "SAFT_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
    "SAFT_MAX_EXTRACTED_BYTES": str(4 * 1024 * 1024),
    "SAFT_MAX_ARCHIVE_MEMBERS": "300",
    "SAFT_UPLOAD_PART_BYTES": "2048",  # a few parts for the small generated datasets
    "SAFT_PROGRESS_INTERVAL": "0.2",
    "SAFT_LOG_LEVEL": "INFO",
    # webhook receivers in the tests listen on 127.0.0.1; retries come at once
    "SAFT_WEBHOOK_ALLOW_PRIVATE": "1",
    "SAFT_WEBHOOK_RETRY_BASE": "0.2",
    "SAFT_WEBHOOK_POLL_INTERVAL": "0.2",
}


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFT_")}
    env.update(LIMITS)
    env.update(SAFT_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    env.update(extra)
    return env


def saft(*args: str) -> list[str]:
    return [sys.executable, "-m", "saft_cli", *args]


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_until(check: Callable[[], T], *, timeout: float, interval: float = 0.2) -> T | None:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return None


@dataclass
class Proc:
    """A subprocess whose output is collected by a thread (so pipes never fill up)."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        proc = cls(name, popen)
        threading.Thread(target=proc._drain, daemon=True).start()
        return proc

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def tail(self, n: int = 40) -> str:
        return f"--- {self.name} (last {n} lines) ---\n" + "\n".join(self.lines[-n:])

    def stop(self, grace: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class Stack:
    """A running service: where it listens, its data dir, keys of two tenants, its processes."""

    kind: str
    base_url: str
    data_dir: Path
    keys: dict[str, str]
    procs: list[Proc]
    env: dict[str, str]
    import_root: Path | None = None  # SAFT_IMPORT_ROOTS: datasets here may be registered in place

    def client(self, tenant: str = "alpha", **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120, **kw)  # type: ignore[arg-type]

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)


def wait_ready(stack: Stack, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in stack.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}\n{stack.logs()}")
        try:
            r = httpx.get(stack.base_url + "/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout} s: {last}\n{stack.logs()}")


def serve_key(proc: Proc, timeout: float = 180.0) -> str:
    """The key ``saft serve`` printed: it comes once its worker is ready, after the worker's start-up output."""
    line = wait_until(lambda: next((ln for ln in proc.lines if ln.startswith("API key")), None), timeout=timeout)
    assert line, f"saft serve printed no key\n{proc.tail()}"
    return line.split()[-1]


def create_key(env: dict[str, str], tenant: str) -> str:
    out = subprocess.run(
        saft("keys", "create", "--tenant", tenant),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("saft_"), out.stdout
    return key


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """A new, empty Postgres database, dropped on exit (its connections too); yields its SQLAlchemy URL. Skips
    the test when Postgres is not reachable. Dispose of engines on it before leaving the block."""
    if not reachable(PG_HOST, PG_PORT):
        pytest.skip(f"Postgres is not reachable at {PG_HOST}:{PG_PORT}")
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a migrated, empty database of each kind, for tests that use the store in-process."""
    from saft_service import db
    from saft_service.settings import Settings

    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            s = Settings(data_dir=tmp_path)
        else:
            s = Settings(data_dir=tmp_path, database_url=stack.enter_context(scratch_postgres("saft_store")))
        stack.callback(lambda: db.get_engine(s).dispose())  # before the database is dropped
        db.upgrade(s)
        yield s


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("saft_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/9"


@pytest.fixture(scope="session")
def pg_stack(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API and worker as separate processes on Postgres + Redis (the production layout)."""
    data_dir = tmp_path_factory.mktemp("pg-data")
    queue = f"saft-test-{secrets.token_hex(4)}"
    # Data-loader worker processes inside the Celery pool's child, as a GPU deployment runs them.
    models_dir = tmp_path_factory.mktemp("pg-models")  # the allow-listed weights folder (empty until a test)
    import_root = tmp_path_factory.mktemp("pg-imports")
    env = base_env(data_dir, SAFT_DATABASE_URL=postgres_url, SAFT_BROKER_URL=redis_url, SAFT_QUEUE_NAME=queue,
                   SAFT_DATA_WORKERS="2", SAFT_MODELS_DIR=str(models_dir), SAFT_IMPORT_ROOTS=str(import_root),
                   SAFT_WORKER_METRICS_PORT=str(free_port()))
    migrate = subprocess.run(saft("migrate"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    keys = {t: create_key(env, t) for t in ("alpha", "beta")}
    port = free_port()
    procs = [
        Proc.start("worker", saft("worker"), env),
        Proc.start("api", saft("api", "--host", "127.0.0.1", "--port", str(port)), env),
    ]
    stack = Stack("postgres+redis", f"http://127.0.0.1:{port}", data_dir, keys, procs, env, import_root)
    try:
        wait_ready(stack)
        yield stack
    finally:
        for p in procs:
            p.stop()
        import redis

        redis.Redis.from_url(redis_url).delete(queue)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``saft serve`` on the embedded default, nothing else running; the key comes from its output."""
    data_dir = tmp_path_factory.mktemp("embedded-data")
    import_root = tmp_path_factory.mktemp("embedded-imports")
    # JSON log lines (API and worker), as an operator would collect them; the banner is printed, not logged.
    env = base_env(data_dir, SAFT_IMPORT_ROOTS=str(import_root), SAFT_LOG_FORMAT="json",
                   SAFT_WORKER_METRICS_PORT=str(free_port()))
    port = free_port()
    proc = Proc.start("serve", saft("serve", "--port", str(port)), env)
    stack = Stack("embedded", f"http://127.0.0.1:{port}", data_dir, {}, [proc], env, import_root)
    try:
        wait_ready(stack)
        stack.keys["alpha"] = serve_key(proc)
        assert any(ln == f"URL: {stack.base_url}" for ln in proc.lines), stack.logs()
        stack.keys["beta"] = create_key(env, "beta")
        yield stack
    finally:
        worker_pids = children(proc.popen.pid)
        proc.stop()
    # Stopping `saft serve` stops its worker too (no stray job processes).
    gone = wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in worker_pids), timeout=30)
    assert worker_pids and gone


@pytest.fixture(params=["postgres+redis", "embedded"], scope="session")
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue("pg_stack" if request.param == "postgres+redis" else "embedded_stack")


# --- datasets --------------------------------------------------------------------------------------------


def render(root: Path, per_class: int, seed: int) -> Path:
    from saft_worlds.shapes import render_shapes

    return render_shapes(root, per_class=per_class, seed=seed)


def zip_dir(root: Path, *, wrap: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                arc = p.relative_to(root).as_posix()
                zf.write(p, f"{wrap}/{arc}" if wrap else arc)
    return buf.getvalue()


def tar_gz_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, p.relative_to(root).as_posix(), recursive=False)
    return buf.getvalue()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 6 generated images, with classes.json."""
    return render(tmp_path_factory.mktemp("shapes") / "shapes", per_class=6, seed=0)


@pytest.fixture(scope="session")
def shapes_zip(shapes_dir: Path) -> bytes:
    return zip_dir(shapes_dir, wrap="shapes")  # zipped as a folder, as people do


@pytest.fixture(scope="session")
def shifted_tar_gz(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tar_gz_dir(render(tmp_path_factory.mktemp("shifted") / "shifted", per_class=3, seed=7))


def wait_for_job(client: httpx.Client, job_id: str, *, until: set[str], timeout: float = 300.0) -> dict:
    """Poll a job until its status is in ``until``; returns the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.5)


def wait_for_training(client: httpx.Client, job_id: str, timeout: float = 180.0) -> dict:
    """Poll a job until it has made at least one training step; returns the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["stage"] == "training" and job["progress"]["step"] > 0:
            return job
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not reach training: {job}")
        time.sleep(0.3)


def stored_datasets(stack: Stack) -> set[str]:
    """Dataset folders in the artifact store, and anything left in staging."""
    ds = stack.data_dir / "datasets"
    staging = stack.data_dir / "staging"
    return {p.name for p in ds.iterdir()} | {f"staging/{p.name}" for p in staging.iterdir()}


def stack_settings(stack: Stack) -> Settings:
    """The settings of ``stack``'s processes, for reading or changing its store from a test."""
    from saft_service.settings import Settings

    return Settings(data_dir=stack.data_dir, database_url=stack.env.get("SAFT_DATABASE_URL"),
                    broker_url=stack.env.get("SAFT_BROKER_URL"))


@contextmanager
def second_api(base: Stack, name: str, *, workers: int = 1, **env: str) -> Iterator[Stack]:
    """Another ``saft api`` (with ``workers`` uvicorn processes) on ``base``'s database and keys, with ``env`` on
    top (e.g. a queue no worker consumes, so that its jobs stay queued)."""
    full_env = {**base.env, **env}
    port = free_port()
    argv = saft("api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers))
    api = Proc.start(name, argv, full_env)
    stack = Stack(name, f"http://127.0.0.1:{port}", base.data_dir, dict(base.keys), [api], full_env, base.import_root)
    try:
        wait_ready(stack)
        yield stack
    finally:
        api.stop()


@pytest.fixture(scope="session")
def idle_api(pg_stack: Stack) -> Iterator[Stack]:
    """A second API on ``pg_stack``'s database whose queue no worker consumes: its jobs stay queued (quiet). It
    waits only 2 s for a request body that stops arriving."""
    with second_api(pg_stack, "api-idle", SAFT_QUEUE_NAME=f"idle-{secrets.token_hex(4)}",
                    SAFT_REQUEST_BODY_TIMEOUT="2") as stack:
        yield stack
