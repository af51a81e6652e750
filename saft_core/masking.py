"""Global top-k selection of the highest-scoring parameter entries.

Exactly ``k = round(ratio * N)`` entries are selected, N being the number of eligible entries. Ties at the
threshold are broken deterministically: among equal scores, earlier entries win, ordering entries first by the
order of ``scores`` (the model's ``named_parameters()`` order) and then by flat index within a tensor.

Memory: the threshold comes from per-tensor top-k candidates (sum over tensors of min(k, numel) values), and
the selection is done tensor by tensor, so the extra memory is those candidates plus one tensor's temporaries,
never a concatenated copy of all scores.
"""

from __future__ import annotations

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
    threshold = kth_largest(scores, k)
    # 1) everything strictly above the threshold is in
    above = {n: int((s > threshold).sum()) for n, s in scores.items()}
    ties_needed = k - sum(above.values())
    indices: dict[str, torch.Tensor] = {}
    for n, s in scores.items():
        flat = s.reshape(-1)
        chosen = flat > threshold
        # 2) then entries equal to the threshold, in global order, until k is reached
        if ties_needed > 0:
            eq = (flat == threshold).nonzero().squeeze(1)[:ties_needed]
            chosen[eq] = True
            ties_needed -= eq.numel()
        idx = chosen.nonzero().squeeze(1)
        if idx.numel():
            indices[n] = idx.to(torch.int64).cpu()
    return Mask(indices=indices, numel=numel, k=k, ratio=ratio)
