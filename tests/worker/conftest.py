"""The worker on its own: ``worker.runner.run_job`` in this process, on a migrated SQLite store (the
embedded default), with a stub in the core's place (``run_job``'s ``finetune`` parameter). No Celery, Redis or
subprocess: each test runs a job to its end in under a second and reads the row, its events and the files left.

- ``store``: the settings of a fresh store, helpers to read it back, and ``outage``, which makes the database
  fail as one that went down does (SQLAlchemy's ``before_cursor_execute`` hook raising ``OperationalError``).
- ``job``: a queued job of a tenant with a webhook endpoint (so the final transaction's deliveries show) on a
  dataset whose folder exists.
- ``StubCore``: stands in for ``saft_core.pipeline.finetune``: writes a snapshot and its outputs where the
  core would, reports a stage and two steps, and calls ``during(callbacks)`` between the two steps.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from saft_core.config import FinetuneConfig, ModelSpec
from saft_core.results import Callbacks, EvalScore, FinetuneResult, MaskSummary, Progress, TensorMaskStats
from saft_service import db, jobs, keys, webhooks
from saft_service.jobspec import JobSpec
from saft_service.settings import Settings
from saft_service.storage import Storage
from saft_service.tables import Dataset, Job, JobEvent, WebhookDelivery, WebhookEndpoint

CHECKPOINT_BYTES = b"a sparse delta"
MASK_BYTES = b"a mask"
SNAPSHOT_FILE = "train_state.pt"
DATABASE_FILE = "saft.db"  # the embedded store's file in the data dir


class Outage:
    """The store's database, going down and coming back: while ``down`` every statement fails; ``fail_next(n,
    where)`` fails the next ``n`` statements that ``where(statement, parameters)`` picks, and lets the rest
    through. ``failed`` counts the statements refused."""

    def __init__(self, settings: Settings) -> None:
        self.engine = db.get_engine(settings)
        self.down = False
        self._next: list[tuple[Callable[[str, Any], bool], int]] = []
        self.failed = 0
        event.listen(self.engine, "before_cursor_execute", self._statement)

    def fail_next(self, n: int, where: Callable[[str, Any], bool]) -> None:
        self._next.append((where, n))

    def _statement(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        for i, (where, n) in enumerate(self._next):
            if n > 0 and where(statement, parameters):
                self._next[i] = (where, n - 1)
                break
        else:
            if not self.down:
                return
        self.failed += 1
        raise OperationalError(statement, parameters, ConnectionError("the database is down"))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)


@dataclass
class Store:
    settings: Settings
    outage: Outage

    @property
    def storage(self) -> Storage:
        return Storage(self.settings)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with db.session_scope(self.settings) as s:
            yield s

    def row(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        with self.session() as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def deliveries(self, job_id: str) -> list[str]:
        """The webhook deliveries written about the job, by event type."""
        with self.session() as s:
            types = s.scalars(select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id))
            return sorted(types)

    def files(self, job_id: str) -> list[str]:
        """The files under the job's folder, relative to it."""
        root = self.storage.job_dir(job_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once: each test starts from a copy (migrating takes a second a test)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("migrated"))
    db.upgrade(settings)
    db.get_engine(settings).dispose()
    return settings.resolved_data_dir / DATABASE_FILE


@pytest.fixture
def store(tmp_path: Path, migrated_database: Path) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path / "data", progress_interval=0.0, db_retry_seconds=0.0)
    settings.resolved_data_dir.mkdir(parents=True)
    shutil.copyfile(migrated_database, settings.resolved_data_dir / DATABASE_FILE)
    assert settings.sqlalchemy_url.endswith(DATABASE_FILE)
    outage = Outage(settings)
    try:
        yield Store(settings, outage)
    finally:
        outage.close()
        db.get_engine(settings).dispose()


@pytest.fixture
def job(store: Store) -> str:
    """A queued job; its tenant has a webhook endpoint for every job event, its dataset one image."""
    with store.session() as s:
        tenant = keys.get_or_create_tenant(s, f"t-{secrets.token_hex(3)}")
        s.flush()
        s.add(WebhookEndpoint(tenant_id=tenant.id, url="https://receiver.example/hook",
                              events=list(webhooks.EVENT_TYPES), secret=webhooks.new_secret()))
        ds_id = f"ds_{secrets.token_hex(6)}"
        folder = store.storage.dataset_dir(ds_id)
        (folder / "circle").mkdir(parents=True)
        (folder / "circle" / "0.png").write_bytes(b"an image")
        s.add(Dataset(id=ds_id, tenant_id=tenant.id, name="shapes", path=store.storage.relative(folder),
                      num_images=1, classes=["circle"], class_names=["circle"], counts={"circle": 1},
                      size_bytes=8))
        spec = JobSpec(dataset_id=ds_id, model="saft-tiny", pretrained="world")
        created = jobs.create(s, tenant_id=tenant.id, dataset_id=ds_id, spec=spec.model_dump(mode="json"))
        s.flush()
        return created.id


During = Callable[[Callbacks], None]


def _nothing(_: Callbacks) -> None:
    return None


@dataclass
class StubCore:
    """``saft_core.pipeline.finetune``'s stand-in (see the module docstring); ``configs``: what it was given."""

    during: During = _nothing
    configs: list[FinetuneConfig] = field(default_factory=list)

    def __call__(self, cfg: FinetuneConfig, out_dir: Path, callbacks: Callbacks) -> FinetuneResult:
        self.configs.append(cfg)
        assert cfg.snapshot.dir is not None
        Path(cfg.snapshot.dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.snapshot.dir) / SNAPSHOT_FILE).write_bytes(b"the training state")
        callbacks.on_stage("training")
        callbacks.on_progress(Progress("training", 1, 2, loss=0.7, lr=1e-3))
        self.during(callbacks)
        callbacks.on_progress(Progress("training", 2, 2, loss=0.5, lr=5e-4))
        checkpoint, mask = out_dir / "checkpoint.safetensors", out_dir / "mask.safetensors"
        checkpoint.write_bytes(CHECKPOINT_BYTES)
        mask.write_bytes(MASK_BYTES)
        return FinetuneResult(
            checkpoint_path=checkpoint,
            mask_path=mask,
            mask=MaskSummary(
                ratio=0.01, k=3, num_eligible=300, num_params=320,
                tensors=[TensorMaskStats("visual.proj", 200, 2), TensorMaskStats("text_projection", 100, 1)],
            ),
            evaluations=[
                EvalScore("val", "zero-shot", 0.0, 0.5, 1.0, 4, 2),
                EvalScore("val", "fine-tuned", 1.0, 0.75, 1.0, 4, 2),
            ],
            classes=["circle"],
            base_sha256="0" * 64,
            model=ModelSpec("saft-tiny", "world"),
            metrics={"train_loss_first": 0.7, "train_loss_last": 0.5},
            recommended_alpha=1.0,
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metric(name: str, **labels: str) -> float:
    """A sample of this process's metrics (0 before the first observation)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
