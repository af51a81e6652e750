"""The robustness frontier: a fine-tuned model evaluated along ``alpha`` and the alpha to recommend.

A sparse delta (or any delta) can be applied at any ``alpha`` in [0, 1] at load time: ``alpha = 0`` is the
pre-trained model (zero-shot), ``alpha = 1`` the fine-tuned one, and the points between trade accuracy on the
training distribution for accuracy under shift (WiSE-FT). Evaluating a job along a grid of alphas costs only
evaluation passes, so every job reports its frontier and recommends one alpha.

The recommendation rule was fixed before the benchmark that tests it (benchmarks/results/protocol.md, round 3):
the one-standard-error rule on the training distribution's validation split. Take the best validation top-1
over the grid; its binomial standard error is ``sqrt(p (1 - p) / n)``; recommend the smallest alpha whose
validation top-1 is within one standard error of the best. A smaller alpha stays closer to the pre-trained
weights, and an alpha that validation cannot tell apart from the best one costs nothing measurable in
distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from .errors import ConfigError

ALPHA_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
RULE = "one-standard-error"


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """Sorted, distinct alphas in [0, 1]; raises ConfigError on anything else."""
    if not alphas:
        raise ConfigError("at least one alpha is needed")
    for a in alphas:
        if not (isinstance(a, int | float) and math.isfinite(a) and 0.0 <= a <= 1.0):
            raise ConfigError(f"alpha must be a number in [0, 1], got {a!r}")
    return tuple(sorted({float(a) for a in alphas}))


def recommend_alpha(top1_by_alpha: Mapping[float, float], n: int) -> float | None:
    """The smallest alpha whose validation top-1 is within one binomial standard error of the best alpha's.

    ``top1_by_alpha`` maps alpha to validation top-1 in [0, 1], measured on ``n`` images. Returns None when
    there is nothing to choose from (no validation images or no points).
    """
    if n <= 0 or not top1_by_alpha:
        return None
    best = max(top1_by_alpha.values())
    se = math.sqrt(best * (1.0 - best) / n)
    # a tolerance for float noise only: an accuracy exactly one standard error below the best qualifies
    return min(a for a, acc in top1_by_alpha.items() if acc >= best - se - 1e-12)


# --- choosing the alpha to apply -------------------------------------------------------------------------------
RECOMMENDED: Final = "recommended"
AlphaChoice = float | Literal["recommended"]
# The alpha that classify uses when none is given (core CLI, API, remote CLI). RECOMMENDED would deploy each
# checkpoint's recommended alpha instead of the fine-tuned end.
DEFAULT_ALPHA: AlphaChoice = 1.0


def resolve_alpha(choice: AlphaChoice, recommended: float | None) -> float:
    """The alpha to apply: a number as given, or the checkpoint's recommended one (1.0, the fine-tuned model,
    when the checkpoint has none: it was trained without a validation split)."""
    if choice == RECOMMENDED:
        return 1.0 if recommended is None else recommended
    return check_alphas([choice])[0]


def parse_alpha(text: str) -> AlphaChoice:
    """A command-line alpha: a number in [0, 1] or ``recommended``."""
    if text.strip().lower() == RECOMMENDED:
        return RECOMMENDED
    try:
        return check_alphas([float(text)])[0]
    except ValueError:  # not a number, or out of range (ConfigError is a ValueError)
        raise ConfigError(f"alpha must be a number in [0, 1] or {RECOMMENDED!r}, got {text!r}") from None
