import pytest
import torch

from saft_core.errors import ConfigError
from saft_core.masking import k_for_ratio, select_topk


def brute_force_topk(scores: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """Sort every entry by (-score, tensor order, flat index) and keep the first k.

    All entries laid end to end in tensor order, then one stable sort by -score: ties keep their place, which
    is (tensor order, flat index). No threshold, no sampling: the plain definition, fast enough for millions.
    """
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    top = torch.sort(-flat, stable=True).indices[:k]
    starts = torch.tensor([0, *[s.numel() for s in scores.values()]]).cumsum(0)
    tensor_of = torch.searchsorted(starts, top, right=True) - 1
    out: dict[str, list[int]] = {}
    names = list(scores)
    for t, pos in zip(tensor_of.tolist(), top.tolist(), strict=True):
        out.setdefault(names[t], []).append(pos - int(starts[t]))
    return {n: sorted(v) for n, v in out.items()}


def as_lists(mask) -> dict[str, list[int]]:
    return {n: idx.tolist() for n, idx in mask.indices.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.37])
def test_topk_matches_brute_force_without_ties(seed, ratio):
    g = torch.Generator().manual_seed(seed)
    scores = {"a": torch.rand(7, 5, generator=g), "b": torch.rand(40, generator=g), "c": torch.rand(3, 3, 3, generator=g)}
    mask = select_topk(scores, ratio)
    n = sum(s.numel() for s in scores.values())
    assert mask.k == round(ratio * n)
    assert sum(idx.numel() for idx in mask.indices.values()) == mask.k
    assert as_lists(mask) == brute_force_topk(scores, mask.k)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.9])
def test_ties_are_broken_by_tensor_order_then_index(ratio):
    # Many exact ties (zeros and repeated values), as unused token embeddings produce.
    scores = {
        "first": torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0, 1.0]),
        "second": torch.tensor([[1.0, 0.0], [2.0, 1.0]]),
        "third": torch.zeros(10),
    }
    mask = select_topk(scores, ratio)
    assert sum(idx.numel() for idx in mask.indices.values()) == mask.k
    assert as_lists(mask) == brute_force_topk(scores, mask.k)
    # indices are ascending int64
    for idx in mask.indices.values():
        assert idx.dtype == torch.int64
        assert bool((idx[1:] > idx[:-1]).all())


def test_selection_is_deterministic():
    scores = {"w": torch.randint(0, 3, (1000,)).float(), "v": torch.randint(0, 3, (500,)).float()}
    a, b = select_topk(scores, 0.123), select_topk(scores, 0.123)
    assert as_lists(a) == as_lists(b)


def test_summary_counts_every_eligible_tensor():
    scores = {"a": torch.tensor([5.0, 4.0, 0.0]), "b": torch.tensor([0.0, 0.0]), "c": torch.tensor([3.0])}
    summary = select_topk(scores, 0.5).summary(num_params=10)
    assert summary.k == 3 and summary.num_eligible == 6 and summary.num_params == 10
    assert [(t.name, t.numel, t.selected) for t in summary.tensors] == [("a", 3, 2), ("b", 2, 0), ("c", 1, 1)]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match="ratio must be in"):
        k_for_ratio(ratio, 100)


def test_ratio_that_selects_nothing_is_refused():
    with pytest.raises(ConfigError, match="selects no entry"):
        select_topk({"a": torch.rand(100)}, 0.001)


@pytest.mark.parametrize("sigmas", [6.0, -1e6])  # -1e6: the sampled bound is too high, the exact fallback runs
def test_sampled_threshold_is_exact_with_ties_over_a_million_scores(monkeypatch, sigmas):
    import saft_core.masking as masking

    monkeypatch.setattr(masking, "SAMPLE_SIGMAS", sigmas)
    g = torch.Generator().manual_seed(0)
    # few distinct values: many ties at the threshold, broken by tensor order then flat index
    scores = {n: torch.randint(0, 2000, shape, generator=g).float()
              for n, shape in (("a", (700, 1000)), ("b", (300_000,)), ("c", (500, 900)))}
    for ratio in (1e-4, 1e-3, 0.05):
        mask = select_topk(scores, ratio)
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        order = torch.sort(-flat, stable=True).indices[: mask.k]  # reference: stable global ranking
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[order] = True
        offset = 0
        for n, s in scores.items():
            expect = chosen[offset:offset + s.numel()].nonzero().squeeze(1)
            offset += s.numel()
            got = mask.indices.get(n, torch.empty(0, dtype=torch.int64))
            assert torch.equal(got, expect), (n, ratio)
