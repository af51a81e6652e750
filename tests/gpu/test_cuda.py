"""SAFT on CUDA: the sparse engine, a whole fine-tune, a resume and an out-of-memory job (marked ``gpu``).

Run by ``scripts/gpu_check.sh`` on a GPU machine; skipped elsewhere, and rehearsed on the CPU at small sizes
with ``SAFT_TEST_DEVICE=cpu`` (see conftest.py).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from saft_core.checkpoint import DELTA, IDX
from saft_core.config import DataConfig, FinetuneConfig, ModelSpec, SaftConfig, SnapshotConfig, TrainConfig
from saft_core.errors import Cancelled
from saft_core.masking import Mask
from saft_core.pipeline import CHECKPOINT_FILE, finetune
from saft_core.results import Callbacks, Progress
from saft_core.zeroshot import Prompts
from tests.core.test_sparse_grad import BF16_RTOL, CLASSES, _mask_grads, _random_mask, _relative_error

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]

# Tolerance of a run on CUDA against the same run on the CPU (fp32 both): the same mask but for a few entries
# whose scores tie to within float noise, and deltas equal up to summation order. Adam divides each entry's
# gradient by its own scale, so an entry with a tiny gradient can move by up to about lr per step on one device
# and less on the other: most entries are compared closely, every entry within a bound of a few steps.
MASK_AGREEMENT = 0.99
CLOSE_SHARE = 0.99


def _on(mask: Mask, device: torch.device) -> Mask:
    return replace(mask, indices={n: i.to(device) for n, i in mask.indices.items()})


def test_sparse_engine_agrees_with_the_dense_one(device, on_gpu):
    """ViT-B/16 at 224 px on the GPU (saft-tiny at 64 px in the rehearsal); fp32 and bf16 autocast."""
    name, size, batch = ("ViT-B-16", 224, 8) if on_gpu else ("saft-tiny", 64, 2)
    import saft_core.models  # noqa: F401  (registers saft-tiny)

    torch.manual_seed(0)
    model = open_clip.create_model(name, force_image_size=size).train()
    mask = _on(_random_mask(model, 1e-3), device)
    model = model.to(device)
    prompts = Prompts.build(open_clip.get_tokenizer(name), CLASSES, ["a photo of a {}."], device)
    torch.manual_seed(1)
    images, labels = torch.randn(batch, 3, size, size).to(device), (torch.arange(batch) % 3).to(device)
    fp32, _ = _mask_grads(model, prompts, mask, "dense", images, labels)
    sparse32, engine = _mask_grads(model, prompts, mask, "sparse", images, labels)
    assert engine.fallbacks == {}
    assert _relative_error(sparse32, fp32) < 1e-3
    with torch.autocast(device.type, dtype=torch.bfloat16):
        dense, _ = _mask_grads(model, prompts, mask, "dense", images, labels)
        sparse, _ = _mask_grads(model, prompts, mask, "sparse", images, labels)
    assert all(g.dtype == torch.float32 and g.device.type == device.type for g in sparse.values())
    assert _relative_error(sparse, dense) < BF16_RTOL
    assert _relative_error(sparse, fp32) <= 1.25 * _relative_error(dense, fp32) + 1e-3


def _finetune_cli(train: Path, out: Path, device: str, *extra: str) -> dict:
    argv = [sys.executable, "-m", "saft_cli", "finetune", "--model", "saft-tiny", "--pretrained", "world",
            "--train", str(train), "--validation-fraction", "0", "--epochs", "2", "--batch-size", "8",
            "--lr", "1e-3", "--ratio", "0.01", "--seed", "0", "--device", device, "--out", str(out), "--json",
            "--quiet", *extra]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(path: Path) -> dict[str, dict[int, float]]:
    """{tensor: {flat index: delta}} of a SAFT delta file."""
    t = load_file(str(path))
    names = [k.removesuffix(IDX) for k in t if k.endswith(IDX)]
    return {n: dict(zip(t[n + IDX].tolist(), t[n + DELTA].tolist(), strict=True)) for n in names}


def _assert_same_run(a: Path, b: Path, lr: float, steps: int) -> None:
    ea, eb = _entries(a), _entries(b)
    keys_a = {(n, i) for n, d in ea.items() for i in d}
    keys_b = {(n, i) for n, d in eb.items() for i in d}
    assert len(keys_a & keys_b) >= MASK_AGREEMENT * len(keys_a)
    common = keys_a & keys_b
    diffs = [abs(ea[n][i] - eb[n][i]) for n, i in common]
    scale = [abs(ea[n][i]) for n, i in common]
    assert max(diffs) <= 2 * lr * steps
    close = sum(d <= 1e-5 + 1e-2 * s for d, s in zip(diffs, scale, strict=True))
    assert close >= CLOSE_SHARE * len(common), (close, len(common))


@pytest.mark.timeout(900)
def test_saft_finetune_with_loader_workers_matches_the_cpu_run(device, shapes_dir, tmp_path):
    """``saft finetune`` on the device with 2 data-loader workers (pinned memory on CUDA), fp32: its checkpoint
    matches the CPU run's. The same run in bf16 (the default on CUDA) trains too."""
    dev = _finetune_cli(shapes_dir, tmp_path / "dev.safetensors", str(device), "--workers", "2",
                        "--precision", "fp32")
    cpu = _finetune_cli(shapes_dir, tmp_path / "cpu.safetensors", "cpu", "--workers", "0", "--precision", "fp32")
    steps = 2 * -(-48 // 8)
    _assert_same_run(tmp_path / "dev.safetensors", tmp_path / "cpu.safetensors", 1e-3, steps)
    assert dev["k"] == cpu["k"]
    if device.type == "cuda":  # on the CPU "auto" is fp32: the run above
        auto = _finetune_cli(shapes_dir, tmp_path / "auto.safetensors", str(device), "--workers", "2")
        deltas = [v for d in _entries(tmp_path / "auto.safetensors").values() for v in d.values()]
        assert auto["k"] == cpu["k"] and all(math.isfinite(v) for v in deltas) and any(deltas)


def test_a_job_too_big_for_the_gpu_fails_out_of_memory_and_the_worker_runs_the_next(on_gpu, shapes_dir, tmp_path):
    """Through ``saft serve``: a worker held to 1 % of the GPU (SAFT_CUDA_MEMORY_FRACTION) gets a ViT-B/16 job
    at batch 48, which needs several GB; it fails ``out_of_memory`` and the same worker then runs a small job."""
    if not on_gpu:
        pytest.skip("out of memory is a GPU's failure; the CPU rehearsal does not exhaust this machine's memory")
    from benchmarks.gpu_e2e import Service

    with Service(tmp_path / "data", "cuda", SAFT_CUDA_MEMORY_FRACTION="0.01") as service, service.client() as c:
        ds = c.datasets.upload(shapes_dir, name="shapes")
        big = c.jobs.create(ds, model="ViT-B-16", pretrained="none", epochs=1, batch_size=48,
                            scoring_batch_size=48, validation_fraction=0)
        big = c.jobs.wait(big, timeout=600)
        assert big.status == "failed" and big.error is not None, (big, service.tail())
        assert big.error.code == "out_of_memory", big.error
        small = c.jobs.create(ds, model="saft-tiny", pretrained="world", epochs=1, batch_size=8,
                              validation_fraction=0)
        small = c.jobs.wait(small, timeout=600)
        assert small.status == "succeeded", (small, service.tail())


def _config(train: Path, device: torch.device, **snapshot) -> FinetuneConfig:
    return FinetuneConfig(
        model=ModelSpec("saft-tiny", "world"),
        data=DataConfig(train=str(train), workers=2),
        train=TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, seed=0),
        method=SaftConfig(ratio=0.01, scoring_batch_size=8),
        device=str(device),
        snapshot=SnapshotConfig(**snapshot) if snapshot else SnapshotConfig(),
    )


def test_a_run_cut_on_the_device_resumes_from_its_snapshot(device, shapes_dir, tmp_path):
    cfg = _config(shapes_dir, device)
    finetune(cfg, tmp_path / "whole")
    snap = _config(shapes_dir, device, dir=str(tmp_path / "snap"), interval_s=0.0)
    seen: list[int] = []

    def on_progress(p: Progress) -> None:
        if p.stage == "training":
            seen.append(p.step)

    with pytest.raises(Cancelled):
        finetune(snap, tmp_path / "cut", Callbacks(on_progress=on_progress, should_cancel=lambda: bool(seen)
                                                   and seen[-1] >= 7))
    messages: list[str] = []
    finetune(snap, tmp_path / "resumed", Callbacks(on_message=lambda _level, text: messages.append(text)))
    assert any("resumed training from its snapshot at step 7" in m for m in messages), messages
    _assert_same_run(tmp_path / "resumed" / CHECKPOINT_FILE, tmp_path / "whole" / CHECKPOINT_FILE, 1e-3, 12)
