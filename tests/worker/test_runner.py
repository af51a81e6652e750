"""``run_job`` from the claim to the job's end, for every way an attempt ends: each test asserts the row, its
events, the webhook deliveries written in the final transaction and the files left in the job's folder."""

from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import DBAPIError

from saft_core.errors import Cancelled, DataError
from saft_core.results import Callbacks
from saft_service import jobs
from saft_service.tables import Checkpoint, Dataset, Evaluation, Mask
from worker.runner import run_job

from .conftest import CHECKPOINT_BYTES, MASK_BYTES, SNAPSHOT_FILE, During, Store, StubCore, metric, sha256


def run(store: Store, job_id: str, core: StubCore) -> None:
    run_job(job_id, worker="test-worker", settings=store.settings, finetune=core)


def kinds(store: Store, job_id: str) -> list[str]:
    return [e.kind for e in store.events(job_id)]


# --- succeeded ----------------------------------------------------------------------------------------------


def test_a_run_that_succeeds_stores_its_outputs_and_keeps_only_them(store: Store, job: str) -> None:
    leftover = store.storage.job_dir(job) / "attempt-7"  # the outputs of an attempt whose worker was lost
    leftover.mkdir(parents=True)
    (leftover / "checkpoint.safetensors").write_bytes(b"half written")
    before = {
        "attempts": metric("saft_job_attempts_total", kind="first"),
        "succeeded": metric("saft_job_duration_seconds_count", status="succeeded"),
        "training": metric("saft_job_stage_duration_seconds_count", stage="training"),
    }
    core = StubCore()
    run(store, job, core)
    assert metric("saft_job_attempts_total", kind="first") == before["attempts"] + 1
    assert metric("saft_job_duration_seconds_count", status="succeeded") == before["succeeded"] + 1
    assert metric("saft_job_stage_duration_seconds_count", stage="training") == before["training"] + 1

    # the core was given the dataset's folder, and snapshots where the next attempt would look
    (cfg,) = core.configs
    assert cfg.data.train == str(store.storage.dataset_dir(store.row(job).spec["dataset_id"]))
    assert cfg.snapshot.dir == str(store.storage.job_dir(job) / "resume")
    row = store.row(job)
    assert (row.status, row.attempts, row.error_code) == ("succeeded", 1, None)
    assert (row.step, row.total_steps, row.stage) == (2, 2, None)
    assert row.metrics == {"train_loss_first": 0.7, "train_loss_last": 0.5}
    with store.session() as s:
        checkpoint = s.get(Checkpoint, job)
        assert checkpoint is not None
        assert checkpoint.path == f"jobs/{job}/attempt-1/checkpoint.safetensors"
        assert (checkpoint.sha256, checkpoint.size_bytes) == (sha256(CHECKPOINT_BYTES), len(CHECKPOINT_BYTES))
        assert checkpoint.recommended_alpha == 1.0 and checkpoint.alpha_rule is not None
        mask = s.get(Mask, job)
        assert mask is not None and (mask.k, mask.sha256) == (3, sha256(MASK_BYTES))
        assert [(t.name, t.selected) for t in mask.tensors] == [("visual.proj", 2), ("text_projection", 1)]
        evaluated = sorted(e.model for e in s.query(Evaluation).filter_by(job_id=job))
        assert evaluated == ["fine-tuned", "zero-shot"]
    assert kinds(store, job) == ["status", "status", "stage", "progress", "progress", "metrics", "status"]
    assert store.events(job)[-1].data == {"status": "succeeded"}
    assert store.deliveries(job) == ["job.succeeded"]
    # the outputs stay; the snapshots and the lost attempt's folder go
    assert store.files(job) == ["attempt-1/checkpoint.safetensors", "attempt-1/mask.safetensors"]


def test_a_database_that_fails_once_while_the_result_is_recorded_is_retried(store: Store, job: str) -> None:
    store.settings.db_retry_seconds = 30.0
    # the compare-and-set to succeeded: its transaction rolls back and is tried again
    store.outage.fail_next(1, lambda sql, args: sql.startswith("UPDATE jobs SET status") and "succeeded" in args)
    run(store, job, StubCore())
    assert store.outage.failed == 1
    assert store.row(job).status == "succeeded"
    # written once: the failed transaction left nothing behind
    assert kinds(store, job) == ["status", "status", "stage", "progress", "progress", "metrics", "status"]
    assert store.deliveries(job) == ["job.succeeded"]
    assert store.files(job) == ["attempt-1/checkpoint.safetensors", "attempt-1/mask.safetensors"]


# --- failed -------------------------------------------------------------------------------------------------


def _raise(error: BaseException) -> During:
    def during(_: Callbacks) -> None:
        raise error

    return during


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (DataError("dataset has 1 class; at least 2 are needed"), "invalid_dataset", "at least 2 are needed"),
        (RuntimeError("boom in /srv/secret/module.py"), "internal_error", "unexpected error in the worker"),
        (MemoryError(), "out_of_memory", "lower batch_size"),
        (OSError(errno.ENOSPC, "No space left on device"), "storage_full", "the service's storage is full"),
    ],
    ids=["core-error", "crash", "out-of-memory", "disk-full"],
)
def test_a_run_that_fails_ends_failed_with_its_code_and_leaves_no_files(
    store: Store, job: str, error: BaseException, code: str, message: str
) -> None:
    run(store, job, StubCore(during=_raise(error)))
    row = store.row(job)
    assert (row.status, row.error_code) == ("failed", code)
    assert message in (row.error_message or "") and "/srv/secret" not in (row.error_message or "")
    last = store.events(job)[-1]
    assert (last.kind, last.level, last.data) == ("error", "error", {"status": "failed", "code": code})
    assert store.deliveries(job) == ["job.failed"]
    assert not store.storage.job_dir(job).exists()  # outputs and snapshots both gone


def test_a_core_error_naming_a_dataset_file_shows_the_client_no_server_path(store: Store, job: str) -> None:
    folder = store.storage.datasets
    run(store, job, StubCore(during=_raise(DataError(f"cannot read {folder}/ds_x/circle/0.png: truncated"))))
    row = store.row(job)
    assert row.error_message == "cannot read ds_x/circle/0.png: truncated"


def test_a_job_whose_dataset_was_deleted_fails_before_the_core_starts(store: Store, job: str) -> None:
    with store.session() as s:
        s.query(Dataset).delete()
    core = StubCore()
    run(store, job, core)
    row = store.row(job)
    assert (row.status, row.error_code) == ("failed", "dataset_missing")
    assert "were deleted before the job ran" in (row.error_message or "")
    assert core.configs == [] and store.deliveries(job) == ["job.failed"]
    assert not store.storage.job_dir(job).exists()


def test_a_stored_spec_the_core_now_refuses_fails_invalid_config_before_the_core_starts(
    store: Store, job: str
) -> None:
    with store.session() as s:
        row = s.get(jobs.Job, job)
        assert row is not None
        row.spec = {**row.spec, "hyperparameters": {**row.spec["hyperparameters"], "epochs": 0}}
    core = StubCore()
    run(store, job, core)
    row = store.row(job)
    assert (row.status, row.error_code) == ("failed", "invalid_config") and core.configs == []
    assert "epochs" in (row.error_message or "")


# --- cancelled ----------------------------------------------------------------------------------------------


def _cancel_then_poll(store: Store, job_id: str) -> During:
    def during(callbacks: Callbacks) -> None:
        with store.session() as s:
            row = s.get(jobs.Job, job_id)
            assert row is not None
            jobs.request_cancel(s, row)
        with pytest.raises(Cancelled):  # the core's poll between two batches
            callbacks.check_cancel()
        raise Cancelled()

    return during


def test_a_cancelled_run_stops_at_the_next_poll_and_ends_cancelled(store: Store, job: str) -> None:
    run(store, job, StubCore(during=_cancel_then_poll(store, job)))
    row = store.row(job)
    assert (row.status, row.error_code, row.cancel_requested) == ("cancelled", None, True)
    assert store.events(job)[-1].data == {"status": "cancelled"}
    assert store.deliveries(job) == ["job.cancelled"]
    assert not store.storage.job_dir(job).exists()


def test_a_cancel_that_lands_between_the_claim_and_the_core_stops_the_job_before_the_core(
    store: Store, job: str
) -> None:
    with store.session() as s:  # the flag the API sets on a running job, already there when the worker looks
        row = s.get(jobs.Job, job)
        assert row is not None
        row.cancel_requested = True
    core = StubCore()
    run(store, job, core)
    assert store.row(job).status == "cancelled" and core.configs == []
    assert store.deliveries(job) == ["job.cancelled"]


# --- lost: another attempt owns the job ---------------------------------------------------------------------


def _taken_over(store: Store, job_id: str, then: BaseException | None = None) -> During:
    """The reaper requeues the job and another worker claims it (attempt 2), which writes its own files."""

    def during(_: Callbacks) -> None:
        with store.session() as s:
            row = s.get(jobs.Job, job_id)
            assert row is not None and jobs.requeue(s, row, "no heartbeat")
        with store.session() as s:
            assert jobs.claim(s, job_id, worker="other-worker/1") is not None
        theirs = store.storage.job_dir(job_id) / "attempt-2"
        theirs.mkdir(parents=True)
        (theirs / "checkpoint.safetensors").write_bytes(b"attempt 2's")
        if then is not None:
            raise then

    return during


@pytest.mark.parametrize(
    "then", [None, DataError("bad image"), Cancelled()], ids=["finishes", "fails", "cancelled"]
)
def test_an_attempt_that_lost_its_job_touches_neither_the_row_nor_the_new_attempts_files(
    store: Store, job: str, then: BaseException | None
) -> None:
    abandoned = metric("saft_job_duration_seconds_count", status="abandoned")
    run(store, job, StubCore(during=_taken_over(store, job, then)))
    assert metric("saft_job_duration_seconds_count", status="abandoned") == abandoned + 1
    row = store.row(job)
    assert (row.status, row.attempts, row.worker) == ("running", 2, "other-worker/1")
    assert row.error_code is None and "train_loss_first" not in (row.metrics or {})  # attempt 1's: dropped
    with store.session() as s:
        assert s.get(Checkpoint, job) is None
    after_takeover = kinds(store, job)[-1]
    assert after_takeover == "status" and store.events(job)[-1].data["attempt"] == 2
    assert store.deliveries(job) == []
    # attempt 1's outputs are gone; attempt 2's folder and the shared snapshots are left to attempt 2
    assert store.files(job) == ["attempt-2/checkpoint.safetensors", f"resume/{SNAPSHOT_FILE}"]


def test_a_heartbeat_that_finds_the_job_another_attempts_stops_the_core(store: Store, job: str) -> None:
    store.settings.heartbeat_interval = 0.05

    def during(callbacks: Callbacks) -> None:
        _taken_over(store, job)(callbacks)
        # the core polls between batches until the heartbeat thread has seen the job go (bounded, not timed)
        for _ in range(10_000_000):
            if callbacks.should_cancel():
                break
        callbacks.check_cancel()

    run(store, job, StubCore(during=during))
    row = store.row(job)
    assert (row.status, row.attempts) == ("running", 2) and store.deliveries(job) == []
    assert store.files(job) == ["attempt-2/checkpoint.safetensors", f"resume/{SNAPSHOT_FILE}"]


# --- the database down --------------------------------------------------------------------------------------


def test_a_database_down_before_the_claim_raises_and_leaves_the_job_queued(store: Store, job: str) -> None:
    events_before = kinds(store, job)
    core = StubCore()
    store.outage.down = True
    with pytest.raises(DBAPIError):  # the task retries the message
        run(store, job, core)
    store.outage.down = False
    row = store.row(job)
    assert (row.status, row.attempts, row.worker) == ("queued", 0, None)
    assert kinds(store, job) == events_before and core.configs == []
    assert not store.storage.job_dir(job).exists()


def test_a_database_down_after_the_claim_leaves_the_job_running_for_the_reaper_then_it_resumes(
    store: Store, job: str
) -> None:
    def goes_down(callbacks: Callbacks) -> None:
        store.outage.down = True  # and stays down past db_retry_seconds (0 here)

    run(store, job, StubCore(during=goes_down))  # progress writes skip; the result cannot be recorded
    assert store.outage.failed > 0
    store.outage.down = False
    row = store.row(job)
    assert (row.status, row.attempts, row.step) == ("running", 1, 1)  # step 2's progress was never written
    assert "job succeeded" not in [e.message for e in store.events(job)] and store.deliveries(job) == []
    # nothing removed: the next attempt resumes from the snapshots and removes attempt 1's folder
    assert store.files(job) == [
        "attempt-1/checkpoint.safetensors", "attempt-1/mask.safetensors", f"resume/{SNAPSHOT_FILE}"
    ]

    with store.session() as s:  # the reaper, once the heartbeat is stale
        row = s.get(jobs.Job, job)
        assert row is not None and jobs.requeue(s, row, "no heartbeat")
    run(store, job, StubCore())
    row = store.row(job)
    assert (row.status, row.attempts) == ("succeeded", 2)
    with store.session() as s:
        checkpoint = s.get(Checkpoint, job)
        assert checkpoint is not None and checkpoint.path == f"jobs/{job}/attempt-2/checkpoint.safetensors"
    assert store.files(job) == ["attempt-2/checkpoint.safetensors", "attempt-2/mask.safetensors"]
    assert store.deliveries(job) == ["job.succeeded"]
