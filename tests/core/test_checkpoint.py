import pytest
import torch

from saft_core.checkpoint import (
    SparseDelta,
    apply_delta,
    checkpoint_metadata,
    load_delta,
    read_metadata,
    save_delta,
    save_mask,
)
from saft_core.errors import CheckpointError


def meta():
    return checkpoint_metadata(base_model="m", pretrained=None, base_sha256="abc", ratio=0.5, k=2,
                               classes=["cat", "dog"], templates=["a {}"])


def test_roundtrip_and_apply_with_alpha(tmp_path):
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    path = save_delta(tmp_path / "d.safetensors",
                      {"weight": (torch.tensor([1, 4]), torch.tensor([0.5, -1.0])), "bias": (None, torch.tensor([1.0, 2.0]))},
                      meta())
    d = load_delta(path)
    assert d.classes == ["cat", "dog"] and d.templates == ["a {}"] and d.num_entries == 4
    apply_delta(model, d, alpha=0.5)
    expected = before.clone().view(-1)
    expected[1] += 0.25
    expected[4] -= 0.5
    assert torch.equal(model.weight.detach().view(-1), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors"]  # no temporary file left


def test_mask_file_is_not_a_delta(tmp_path):
    path = save_mask(tmp_path / "m.safetensors", {"weight": torch.tensor([0, 2])}, meta())
    assert read_metadata(path)["format"] == "saft-mask"
    with pytest.raises(CheckpointError, match="not a SAFT delta checkpoint"):
        load_delta(path)


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_delta(tmp_path / "x.safetensors")


def test_bad_indices_change_nothing(tmp_path):
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = SparseDelta({"bias": (None, torch.ones(2)), "weight": (torch.tensor([2, 99]), torch.ones(2))}, {})
    with pytest.raises(CheckpointError, match="out of range"):
        apply_delta(model, bad)
    unknown = SparseDelta({"nope": (torch.tensor([0]), torch.ones(1))}, {})
    with pytest.raises(CheckpointError, match="does not have"):
        apply_delta(model, unknown)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_descending_indices_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w:idx": torch.tensor([3, 1]), "w:delta": torch.ones(2)}, str(tmp_path / "d.safetensors"),
              metadata={**meta(), "format": "saft-sparse-delta"})
    with pytest.raises(CheckpointError, match="not strictly ascending"):
        load_delta(tmp_path / "d.safetensors")
