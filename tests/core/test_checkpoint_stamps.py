"""Checkpoints stamp their writer: saft's and open_clip's versions in the delta's, the mask's and the merged
weights' metadata; files written before the stamps still load."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest
import torch
from safetensors.torch import save_file

import saft_core
from saft_core import checkpoint
from saft_core.checkpoint import (
    UNKNOWN_VERSION,
    apply_delta,
    checkpoint_metadata,
    load_delta,
    load_mask,
    read_metadata,
    save_delta,
    save_mask,
    save_weights,
    writer_versions,
)

STAMPS = {"saft_version": version("saft-service"), "open_clip_version": version("open_clip_torch")}


def _meta() -> dict[str, str]:
    return checkpoint_metadata(base_model="m", pretrained=None, base_sha256="abc", ratio=0.5, k=2,
                               classes=["cat", "dog"], templates=["a {}"])


@pytest.mark.parametrize("kind", ["delta", "mask", "weights"])
def test_every_writer_stamps_the_installed_versions(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "delta":
        save_delta(path, {"weight": (torch.tensor([1]), torch.tensor([0.5]))}, _meta())
    elif kind == "mask":
        save_mask(path, {"weight": torch.tensor([0, 2])}, _meta())
    else:
        save_weights(path, {"weight": torch.ones(2)}, {"format": "open_clip-state-dict"})
    meta = read_metadata(path)
    assert {k: meta[k] for k in STAMPS} == STAMPS
    assert meta["open_clip_version"] == __import__("open_clip").__version__


def test_the_stamp_names_this_writer_not_the_callers_copy(tmp_path):
    """Metadata copied from an older file keeps the fields it describes but not the old writer's stamp."""
    old = {**_meta(), "saft_version": "0.0.1", "open_clip_version": "2.0.0"}
    path = save_delta(tmp_path / "d.safetensors", {"weight": (None, torch.ones(2))}, old)
    assert load_delta(path).written_by == STAMPS


def test_a_delta_written_before_the_stamps_still_loads_and_applies(tmp_path):
    # the metadata the writer produced before it stamped versions: checkpoint_metadata plus the format
    path = tmp_path / "old.safetensors"
    save_file({"weight:idx": torch.tensor([0, 3]), "weight:delta": torch.tensor([1.0, -2.0])}, str(path),
              metadata={**_meta(), "format": "saft-sparse-delta"})
    assert not set(STAMPS) & set(read_metadata(path))
    delta = load_delta(path)
    assert delta.written_by == {}
    assert delta.classes == ["cat", "dog"] and delta.num_entries == 2
    model = torch.nn.Linear(2, 2, bias=False)
    before = model.weight.detach().clone().view(-1)
    apply_delta(model, delta, alpha=1.0)
    assert torch.equal(model.weight.detach().view(-1), before + torch.tensor([1.0, 0.0, 0.0, -2.0]))


def test_a_mask_written_before_the_stamps_still_loads(tmp_path):
    path = tmp_path / "old.mask.safetensors"
    save_file({"weight:idx": torch.tensor([0, 2])}, str(path), metadata={**_meta(), "format": "saft-mask"})
    assert torch.equal(load_mask(path)["weight"], torch.tensor([0, 2]))


@pytest.fixture
def _no_cached_versions():
    writer_versions.cache_clear()
    yield
    writer_versions.cache_clear()  # the next writer looks the real versions up again


def test_versions_fall_back_when_the_distributions_are_not_installed(monkeypatch, _no_cached_versions):
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(checkpoint, "version", not_installed)
    assert writer_versions() == {"saft_version": saft_core.__version__, "open_clip_version": UNKNOWN_VERSION}
