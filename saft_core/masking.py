"""Global top-k selection of the highest-scoring parameter entries.

Exactly ``k = round(ratio * N)`` entries are selected, N being the number of eligible entries. Ties at the
threshold are broken deterministically: among equal scores, earlier entries win, ordering entries first by the
order of ``scores`` (the model's ``named_parameters()`` order) and then by flat index within a tensor.

Speed and memory: the threshold is found among the scores above a lower bound estimated from a seeded random
sample: one pass per tensor collects the entries at or above it (about 1.2 k candidates, checked to be at
least k, so the result is exact), and the threshold and the selection come from the candidates alone. The
extra memory is the candidates plus one tensor's temporaries, never a concatenated copy of all scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .results import MaskSummary, TensorMaskStats


@dataclass
class Mask:
    """Selected entries: {parameter name: ascending int64 flat indices}, only tensors with a selection.

    ``numel`` holds every eligible tensor's size (selected or not), in order.
    """

    indices: dict[str, torch.Tensor]
    numel: dict[str, int]
    k: int
    ratio: float

    def summary(self, num_params: int) -> MaskSummary:
        return MaskSummary(
            ratio=self.ratio,
            k=self.k,
            num_eligible=sum(self.numel.values()),
            num_params=num_params,
            tensors=[
                TensorMaskStats(n, size, int(self.indices[n].numel()) if n in self.indices else 0)
                for n, size in self.numel.items()
            ],
        )


def k_for_ratio(ratio: float, num_eligible: int) -> int:
    if not (0.0 < ratio < 1.0):
        raise ConfigError(f"ratio must be in (0, 1), got {ratio}")
    k = round(ratio * num_eligible)
    if k < 1:
        raise ConfigError(f"ratio {ratio} selects no entry of {num_eligible} eligible parameters; raise it")
    return k


# Threshold search: a random sample of the scores gives a lower bound that ~all of the top k clear (the rank
# is padded by SAMPLE_SIGMAS binomial standard deviations); only values above it are then ranked exactly.
SAMPLE_SIZE = 1 << 20
SAMPLE_SIGMAS = 6.0


def _sample_lower_bound(scores: dict[str, torch.Tensor], k: int, total: int) -> float | None:
    """A value below the k-th largest score with high probability, from a seeded sample; None: no sample."""
    if total <= SAMPLE_SIZE:
        return None
    gen = torch.Generator().manual_seed(0)  # the result is exact either way; the seed only fixes the timing
    parts = []
    for s in scores.values():
        n = round(SAMPLE_SIZE * s.numel() / total)
        if n:
            at = torch.randint(s.numel(), (n,), generator=gen).to(s.device)
            parts.append(s.reshape(-1)[at])
    sample = torch.cat(parts)
    expected = k / total * sample.numel()
    rank = max(1, math.ceil(expected + SAMPLE_SIGMAS * math.sqrt(expected) + 10))
    if rank >= sample.numel():
        return None
    return float(torch.topk(sample, rank, sorted=False).values.min())


def _candidates(scores: dict[str, torch.Tensor], k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """{name: (flat indices, values)} of the scores at or above a sampled lower bound, in one pass; None when
    the sample gives no bound or the bound leaves fewer than k candidates (improbable)."""
    bound = _sample_lower_bound(scores, k, sum(s.numel() for s in scores.values()))
    if bound is None:
        return None
    out = {}
    for n, s in scores.items():
        flat = s.reshape(-1)
        idx = (flat >= bound).nonzero().squeeze(1)
        out[n] = (idx, flat[idx])
    return out if sum(int(i.numel()) for i, _ in out.values()) >= k else None


def kth_largest(scores: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest value over all tensors (0-dim tensor), from per-tensor top-k candidates."""
    candidates = [
        torch.topk(s.reshape(-1), min(k, s.numel()), sorted=False).values for s in scores.values() if s.numel()
    ]
    pool = torch.cat(candidates)
    return torch.topk(pool, k, sorted=False).values.min()


def select_topk(scores: dict[str, torch.Tensor], ratio: float) -> Mask:
    """Select the top ``round(ratio * N)`` entries of ``scores`` globally (see module docstring)."""
    numel = {n: s.numel() for n, s in scores.items()}
    k = k_for_ratio(ratio, sum(numel.values()))
    cands = _candidates(scores, k)
    if cands is not None:
        threshold = torch.topk(torch.cat([v for _, v in cands.values()]), k, sorted=False).values.min()
    else:  # rank every score: the candidates are all entries
        threshold = kth_largest(scores, k)
        cands = {n: (torch.arange(s.numel(), device=s.device), s.reshape(-1)) for n, s in scores.items()}
    # 1) everything strictly above the threshold is in (every such entry is a candidate: threshold >= bound)
    above = {n: idx[vals > threshold] for n, (idx, vals) in cands.items()}
    ties_needed = k - sum(int(a.numel()) for a in above.values())
    indices: dict[str, torch.Tensor] = {}
    for n in scores:
        idx = above[n]
        # 2) then entries equal to the threshold, in global order, until k is reached
        if ties_needed > 0:
            c_idx, c_vals = cands[n]
            eq = c_idx[c_vals == threshold][:ties_needed]
            if eq.numel():
                idx = torch.cat([idx, eq]).sort().values
                ties_needed -= eq.numel()
        if idx.numel():
            indices[n] = idx.to(torch.int64).cpu()
    return Mask(indices=indices, numel=numel, k=k, ratio=ratio)
