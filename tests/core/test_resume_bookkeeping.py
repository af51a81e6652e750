"""``snapshot.Resume`` alone, on a toy loop (no model): a run cut off at any step and resumed draws the same
batches and the same random numbers as the uninterrupted run from there on, and ends in the same state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from saft_core.snapshot import LoopPosition, Resume, Snapshots

EPOCHS, ITEMS, BATCH = 2, 6, 2  # 3 steps an epoch, 6 in all


class Weights:
    """A trainable state of one tensor (the ``Stateful`` a snapshot saves)."""

    def __init__(self) -> None:
        self.w = torch.zeros(3, requires_grad=True)

    def state(self) -> dict[str, torch.Tensor]:
        return {"w": self.w.detach().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])


class Cut(Exception):
    pass


def toy_run(snap_dir: Path | None, *, cut_after: int | None = None) -> tuple[list[tuple[list[int], float]], dict]:
    """Train the toy loop; returns what each step drew (the shuffled items and an "augmentation" from torch's
    global generator) and the end state. ``cut_after``: raise ``Cut`` after that many steps of this call."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(torch.arange(ITEMS)), batch_size=BATCH, shuffle=True, generator=generator)
    weights = Weights()
    opt = torch.optim.SGD([weights.w], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    snapshots = Snapshots(snap_dir, "toy", interval_s=0.0) if snap_dir else None
    resume = Resume(snapshots, weights if snapshots else None, opt, sched, generator)
    pos = resume.start()
    drawn: list[tuple[list[int], float]] = []
    for epoch in range(pos.epoch, EPOCHS):
        for (items,) in resume.epoch(loader, epoch, pos):
            noise = float(torch.rand(()))
            weights.w.grad = torch.full((3,), noise)
            opt.step()
            sched.step()
            pos.stepped(noise)
            resume.step_done(pos, last_step=pos.step == EPOCHS * ITEMS // BATCH)
            drawn.append((items.tolist(), noise))
            if cut_after is not None and len(drawn) == cut_after:
                raise Cut
    end = {"w": weights.w.detach().clone(), "lr": opt.param_groups[0]["lr"], "position": pos}
    return drawn, end


@pytest.mark.parametrize("cut", [1, 2, 3, 5], ids=["first-step", "mid-epoch", "epoch-boundary", "last-epoch"])
def test_a_cut_run_resumes_with_the_uninterrupted_runs_draws_and_ends_in_its_state(tmp_path: Path, cut: int) -> None:
    whole, whole_end = toy_run(None)
    with pytest.raises(Cut):
        toy_run(tmp_path, cut_after=cut)
    rest, end = toy_run(tmp_path)
    assert [items for items, _ in rest] == [items for items, _ in whole[cut:]]  # the same shuffle, no batch again
    assert [noise for _, noise in rest] == [noise for _, noise in whole[cut:]]  # the same global random state
    assert torch.equal(end["w"], whole_end["w"]) and end["lr"] == whole_end["lr"]
    assert end["position"] == whole_end["position"]  # steps, epoch, first loss, the last epoch's losses


def test_without_snapshots_nothing_is_restored_or_saved(tmp_path: Path) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    resume = Resume(None, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), None)
    pos = resume.start()
    assert pos == LoopPosition() and resume.resumed is None
    assert list(resume.epoch([10, 11], 0, pos)) == [10, 11]
    pos.stepped(0.5)
    resume.step_done(pos, last_step=True)  # no snapshots: a no-op
    assert list(tmp_path.iterdir()) == []
