"""A run cut off mid-training resumes from its snapshot and ends with the uninterrupted run's checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saft_core.config import SnapshotConfig
from saft_core.errors import Cancelled
from saft_core.pipeline import CHECKPOINT_FILE, finetune
from saft_core.results import Callbacks, Progress
from saft_core.snapshot import STATE_FILE
from tests.fixtures.model import tiny_config


def cut_after(step: int, seen: list[int]) -> Callbacks:
    """Callbacks that record training steps and ask to stop once ``step`` steps are done."""

    def on_progress(p: Progress) -> None:
        if p.stage == "training":
            seen.append(p.step)

    return Callbacks(on_progress=on_progress, should_cancel=lambda: bool(seen) and seen[-1] >= step)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / CHECKPOINT_FILE))


@pytest.mark.slow  # three fine-tunes a case
@pytest.mark.parametrize(
    ("method", "augment", "cut"),
    [("saft", True, 8), ("saft", False, 6), ("full", False, 3)],
    ids=["saft-augmented-mid-epoch", "saft-epoch-boundary", "full"],
)
def test_a_resumed_run_equals_the_uninterrupted_one(shapes_dir, tmp_path, method, augment, cut) -> None:
    # 24 images, batch 4: 6 steps an epoch, 12 in all.
    cfg = tiny_config(shapes_dir, train=dict(augment=augment, batch_size=4), method=dict(type=method, ratio=0.01))
    finetune(cfg, tmp_path / "whole")

    snap_dir = tmp_path / "snap"
    snap = replace(cfg, snapshot=SnapshotConfig(dir=str(snap_dir), interval_s=0.0, dense_interval_s=0.0))
    seen: list[int] = []
    with pytest.raises(Cancelled):
        finetune(snap, tmp_path / "cut", cut_after(cut, seen))
    assert seen[-1] == cut and (snap_dir / STATE_FILE).is_file()
    assert not (tmp_path / "cut" / CHECKPOINT_FILE).exists()

    resumed_steps: list[int] = []
    messages: list[str] = []
    cb = Callbacks(
        on_progress=lambda p: resumed_steps.append(p.step) if p.stage == "training" else None,
        on_message=lambda level, text: messages.append(text),
    )
    result = finetune(snap, tmp_path / "resumed", cb)
    assert resumed_steps[0] == cut and resumed_steps[-1] == 12  # took up where it stopped, not from 0
    assert any(f"step {cut} of 12" in m for m in messages)
    if method == "saft":
        assert any("mask of an earlier attempt" in m for m in messages)  # scoring was skipped
    whole, again = tensors(tmp_path / "whole"), tensors(tmp_path / "resumed")
    assert whole.keys() == again.keys()
    for name in whole:
        assert torch.equal(whole[name], again[name]), name
    assert result.metrics["train_steps"] == 12


@pytest.mark.slow  # two fine-tunes
def test_a_snapshot_of_another_configuration_is_ignored(shapes_dir, tmp_path) -> None:
    cfg = tiny_config(shapes_dir, train=dict(batch_size=4))
    snap = SnapshotConfig(dir=str(tmp_path / "snap"), interval_s=0.0)
    seen: list[int] = []
    with pytest.raises(Cancelled):
        finetune(replace(cfg, snapshot=snap), tmp_path / "a", cut_after(4, seen))
    other = replace(cfg, train=replace(cfg.train, learning_rate=5e-3), snapshot=snap)
    steps: list[int] = []
    finetune(other, tmp_path / "b", Callbacks(on_progress=lambda p: steps.append(p.step)))
    assert steps[0] == 1  # started from scratch: the snapshot belonged to another learning rate


def test_a_torn_snapshot_starts_again(shapes_dir, tmp_path) -> None:
    snap_dir = tmp_path / "snap"
    snap_dir.mkdir()
    (snap_dir / STATE_FILE).write_bytes(b"not a snapshot")
    cfg = tiny_config(shapes_dir, train=dict(epochs=1), snapshot=SnapshotConfig(dir=str(snap_dir)))
    result = finetune(cfg, tmp_path / "out")
    assert result.metrics["train_steps"] == 3
