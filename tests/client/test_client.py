"""The Python client (clients/python) against the real service, on Postgres + Redis and on the embedded
default: the used-by path, its models against /openapi.json, typed errors, a cut event stream, a corrupted
download, and a retried create with one Idempotency-Key."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from saft_client import (
    AsyncClient,
    ChecksumMismatch,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    RetryPolicy,
    Unauthorized,
    ValidationError,
)
from saft_client.models import SERVER_SCHEMAS

from saft_core.frontier import ALPHA_GRID, RULE
from tests.fixtures.faults import FaultTransport
from tests.fixtures.remote import RemoteRun
from tests.fixtures.stack import free_port, wait_for_job

pytestmark = pytest.mark.service


def test_used_by_path(remote_run: RemoteRun, tmp_path: Path) -> None:
    r = remote_run
    job = r.job
    assert job.progress.total_steps > 0 and job.checkpoint is not None
    assert job.method.type == "saft" and job.method.ratio == 0.01  # flat options went into the method
    assert job.hyperparameters.batch_size == 6 and job.hyperparameters.epochs == 2
    assert job.eval_dataset_ids == [r.eval_dataset.id] and job.metadata == {"purpose": "client-test"}
    assert job.priority == "high"
    # The archive upload reported progress up to its size.
    assert r.upload_progress and r.upload_progress[-1][0] == r.upload_progress[-1][1] > 0
    assert r.eval_dataset.num_images == 9 and r.dataset.num_images == 18
    with r.client() as c:
        # Pagination as iterators: pages of one follow the cursor and see every job once.
        ids = [j.id for j in c.jobs.list(page_size=1)]
        assert job.id in ids and len(ids) == len(set(ids))
        assert [j.id for j in c.jobs.list(page_size=1, limit=1)] == [ids[0]]
        assert {r.dataset.id, r.eval_dataset.id} <= {d.id for d in c.datasets.list(page_size=1)}
        assert c.datasets.get(r.dataset.id).counts == r.dataset.counts
        evals = c.jobs.evaluations(job)
        assert [(e.alpha, e.dataset) for e in evals] == [
            (a, d) for a in ALPHA_GRID for d in ("validation", r.eval_dataset.id)
        ]
        assert {e.model for e in evals if 0 < e.alpha < 1} == {"interpolated"}
        assert all(0.0 <= e.top1 <= e.top5 <= 1.0 and e.n > 0 for e in evals)
        assert job.checkpoint.recommended_alpha in ALPHA_GRID and job.checkpoint.alpha_rule == RULE
        mask = c.jobs.mask(job)
        assert mask.k == sum(t.selected for t in mask.tensors) > 0
        # Downloads: verified, and the same bytes the job's checksum names.
        ckpt = c.jobs.download_checkpoint(job, tmp_path / "out" / "delta.safetensors")
        assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == job.checkpoint.sha256
        mfile = c.jobs.download_mask(job, tmp_path / "mask.safetensors")
        assert hashlib.sha256(mfile.read_bytes()).hexdigest() == mask.sha256
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["delta.safetensors"]  # no temp left
        # Classify with the job's model (labels: its classes) and zero-shot with our labels.
        image = r.stack.data_dir / "datasets" / r.dataset.id / "red_circle"
        first = sorted(image.iterdir())[0]
        res = c.classify([first], job=job, alpha=0.5, top_k=3)
        assert res.job_id == job.id and res.alpha == 0.5 and res.labels == r.dataset.class_names
        assert c.classify([first], job=job, alpha="recommended").alpha == job.checkpoint.recommended_alpha
        assert res.results[0].predictions[0].label == "red circle"
        assert len(res.results[0].predictions) == 3 and abs(sum(p.score for p in res.results[0].predictions) - 1) < 0.05
        zs = c.classify([("x.png", first.read_bytes())], labels=["red circle", "blue square"])
        assert zs.job_id is None and zs.results[0].filename == "x.png"
        assert {p.label for p in zs.results[0].predictions} == {"red circle", "blue square"}
    # Another tenant sees none of it, as a typed error.
    with r.client("beta") as c, pytest.raises(NotFound) as e:
        c.jobs.get(job)
    assert e.value.code == "job_not_found"


def test_cut_event_stream_resumes_without_gaps_or_repeats(remote_run: RemoteRun) -> None:
    r = remote_run
    with r.client() as c:
        stored = [e.id for e in c.jobs.events(r.job)]
    # While the job ran: cut twice mid-event, resumed with Last-Event-ID, every event once. (In id order but
    # for an event committed late, which the server sends when it appears: compare as sorted.)
    assert r.stream_requests >= 3
    ids = [e.id for e in r.events]
    assert sorted(ids) == stored and len(set(ids)) == len(ids)
    assert r.events[-1].kind == "status" and r.events[-1].data["status"] == "succeeded"
    assert {"stage", "progress"} <= {e.kind for e in r.events}
    # The finished job's stream, cut after 1, 200 and 450 bytes (inside the first events) and from an offset.
    transport = FaultTransport(cut={"/events/stream": [1, 200, 450]})
    with r.client(transport=transport, retry=RetryPolicy(backoff=0.05)) as c:
        assert [e.id for e in c.jobs.stream(r.job)] == stored
        assert [e.id for e in c.jobs.stream(r.job, after=stored[2])] == stored[3:]
    resumes = [h.get("Last-Event-ID") for m, p, h in transport.seen if p.endswith("/events/stream")]
    assert resumes[0] is None and len(resumes) >= 5


def test_corrupted_download_raises_and_writes_nothing(remote_run: RemoteRun, tmp_path: Path) -> None:
    dest = tmp_path / "delta.safetensors"
    dest.write_bytes(b"the previous file")
    transport = FaultTransport(flip={"/checkpoint": 4096})  # one byte inverted in transit
    with remote_run.client(transport=transport) as c, pytest.raises(ChecksumMismatch) as e:
        c.jobs.download_checkpoint(remote_run.job, dest)
    assert e.value.expected == remote_run.job.checkpoint.sha256 and e.value.actual != e.value.expected
    assert dest.read_bytes() == b"the previous file"  # untouched, and no partial file beside it
    assert [p.name for p in tmp_path.iterdir()] == ["delta.safetensors"]


def test_problem_documents_become_typed_exceptions(remote_run: RemoteRun) -> None:
    r = remote_run
    with r.client() as c:
        with pytest.raises(NotFound) as nf:
            c.datasets.get("ds_doesnotexist")
        assert nf.value.status == 404 and nf.value.code == "dataset_not_found" and "ds_doesnotexist" in nf.value.detail
        with pytest.raises(ValidationError) as ve:
            c.jobs.create(r.dataset, batch_size=0)
        assert ve.value.code == "validation_error"
        assert any(err["loc"][-2:] == ["hyperparameters", "batch_size"] for err in ve.value.errors), ve.value.errors
        with pytest.raises(Conflict) as cf:
            c.jobs.cancel(r.job)
        assert cf.value.code == "job_finished"
        with pytest.raises(ValidationError) as bad:
            c.classify([("a.png", b"not an image")], job=r.job)
        assert bad.value.status == 422 and bad.value.problem["instance"] == "/v1/classify"
    with Client(r.stack.base_url, "saft_wrong") as c, pytest.raises(Unauthorized) as ua:
        c.jobs.get(r.job)
    assert ua.value.status == 401 and ua.value.code == "invalid_api_key"
    # Nobody listening: retried, then ConnectionFailed.
    dead = Client(f"http://127.0.0.1:{free_port()}", "k", retry=RetryPolicy(max_retries=2, backoff=0.01))
    with dead, pytest.raises(ConnectionFailed):
        dead.jobs.get("job_x")


def test_async_client(remote_run: RemoteRun, shapes_dir: Path, tmp_path: Path) -> None:
    r = remote_run

    async def main() -> tuple[Any, ...]:
        async with AsyncClient(r.stack.base_url, r.stack.keys["alpha"]) as c:
            job = await c.jobs.get(r.job.id)
            listed = [j.id async for j in c.jobs.list(page_size=1)]
            events = [e.id async for e in c.jobs.stream(job)]
            path = await c.jobs.download_checkpoint(job, tmp_path / "a.safetensors")
            try:
                await c.jobs.delete("job_nope")
            except NotFound as e:
                code = e.code
            image = sorted((r.stack.data_dir / "datasets" / r.dataset.id / "red_circle").iterdir())[0]
            res = await c.classify([image], job=job)
            ds = await c.datasets.upload(shapes_dir, name="async-upload")
            await c.datasets.delete(ds)
            return job, listed, events, path, code, res, ds

    job, listed, events, path, code, res, ds = asyncio.run(main())
    assert res.results[0].predictions[0].label == "red circle"
    assert ds.num_images == 18 and ds.name == "async-upload"
    assert job.status == "succeeded" and job.id in listed
    assert sorted(events) == sorted(e.id for e in r.events)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == r.job.checkpoint.sha256
    assert code == "job_not_found"


def test_retried_create_with_the_same_key_makes_one_job(remote_run: RemoteRun) -> None:
    """The first POST reaches the server and creates the job, its answer is lost; the client retries with the
    same Idempotency-Key and must get that job back, not a second one."""
    r = remote_run
    marker = {"idempotency-test": r.stack.kind}
    transport = FaultTransport(lose={"/v1/jobs": 1})
    with r.client(transport=transport, retry=RetryPolicy(backoff=0.05)) as c:
        job = c.jobs.create(r.dataset, epochs=1, batch_size=6, metadata=marker)
        made = [j for j in c.jobs.list() if j.metadata == marker]
        for j in made:  # nothing needs to run: cancel (a queued job stops at once)
            if not j.done:
                c.jobs.cancel(j)
    keys = [h.get("Idempotency-Key") for m, p, h in transport.seen if m == "POST" and p == "/v1/jobs"]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]  # one key for the call and its retry
    with r.stack.client() as http:
        for j in made:
            wait_for_job(http, j.id, until={"succeeded", "failed", "cancelled"}, timeout=120)
    assert [j.id for j in made] == [job.id]  # one job, and the retry got it back


def test_retried_folder_upload_with_the_same_key_makes_one_dataset(remote_run: RemoteRun, shapes_dir: Path) -> None:
    """The same for an upload: the folder is zipped again for the retry (a streamed body cannot be replayed),
    under the same key."""
    r = remote_run
    name = f"idem-upload-{r.stack.kind}"
    transport = FaultTransport(lose={"/v1/datasets": 1})
    with r.client(transport=transport, retry=RetryPolicy(backoff=0.05)) as c:
        ds = c.datasets.upload(shapes_dir, name=name)
        made = [d for d in c.datasets.list() if d.name == name]
        for d in made:
            c.datasets.delete(d)
    keys = [h.get("Idempotency-Key") for m, p, h in transport.seen if m == "POST" and p == "/v1/datasets"]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0]
    assert all(d.num_images == 18 for d in made)  # the retry's freshly zipped body is the whole folder again
    assert [d.id for d in made] == [ds.id]


# --- the client's models against the server's OpenAPI document ---------------------------------------------


def _schema(doc: dict, name: str) -> dict:
    schemas = doc["components"]["schemas"]
    for candidate in (name, f"{name}-Output", f"{name}-Input"):
        if candidate in schemas:
            return schemas[candidate]
    raise AssertionError(f"{name} is not in the server's OpenAPI document")


def _kinds(s: dict, defs: dict) -> tuple[set[str], set[Any]]:
    """JSON types and enum/const values a property schema allows (refs followed into the same document)."""
    types: set[str] = set()
    values: set[Any] = set()
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1].removesuffix("-Output").removesuffix("-Input")
        types.add(f"ref:{name}")
        return types, values
    if "type" in s:
        types |= set(s["type"]) if isinstance(s["type"], list) else {s["type"]}
    if "const" in s:
        values.add(s["const"])
    values |= set(s.get("enum", []))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in s.get(key, []):
            t, v = _kinds(sub, defs)
            types |= t
            values |= v
    return types, values


def test_client_models_match_openapi(remote_run: RemoteRun) -> None:
    import httpx

    doc = httpx.get(remote_run.stack.base_url + "/openapi.json", timeout=30).json()
    for model, server_name in SERVER_SCHEMAS.items():
        server = _schema(doc, server_name)
        mine = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert set(mine["properties"]) == set(server["properties"]), f"{model.__name__} vs {server_name}: fields"
        assert set(mine.get("required", [])) == set(server.get("required", [])), f"{model.__name__}: required"
        for field, prop in server["properties"].items():
            theirs = _kinds(prop, doc)
            ours = _kinds(mine["properties"][field], mine.get("$defs", {}))
            if model.__name__ == "JobCreate":  # the client's request model makes every default optional
                ours = (ours[0] - {"null"}, ours[1])
                theirs = (theirs[0] - {"null"}, theirs[1])
            assert _names(ours) == _names(theirs), f"{model.__name__}.{field}: {ours} vs server {theirs}"


def _names(kinds: tuple[set[str], set[Any]]) -> tuple[set[str], set[Any]]:
    """Client and server call some models differently (Job vs JobPublic): compare refs by server name."""
    back = {m.__name__: s for m, s in SERVER_SCHEMAS.items()}
    return {f"ref:{back.get(t[4:], t[4:])}" if t.startswith("ref:") else t for t in kinds[0]}, kinds[1]


def test_models_registry_is_complete() -> None:
    assert all(issubclass(m, BaseModel) for m in SERVER_SCHEMAS)
