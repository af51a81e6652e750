"""Training health: each warning code from the numbers that raise it, and none for a healthy run."""

from __future__ import annotations

import json
import math

import pytest

from saft_core.health import CODES, training_warnings
from saft_core.results import EvalScore, variant_at


def frontier(top1_by_alpha: dict[float, float], n: int = 60, dataset: str = "validation") -> list[EvalScore]:
    return [EvalScore(dataset, variant_at(a), a, t, 1.0, n, 3) for a, t in top1_by_alpha.items()]


HEALTHY = dict(
    first_loss=1.02, final_loss=0.31, num_classes=3, learning_rate=1e-3,
    evaluations=frontier({0.0: 0.40, 0.25: 0.55, 0.5: 0.70, 0.75: 0.80, 1.0: 0.82}), recommended_alpha=0.75,
)


def codes(**changes: object) -> list[str]:
    return [w.code for w in training_warnings(**{**HEALTHY, **changes})]


def test_a_healthy_run_has_no_warnings() -> None:
    assert training_warnings(**HEALTHY) == []
    # without a validation split only the loss is judged
    assert codes(evaluations=[], recommended_alpha=None) == []


def test_the_issue_s_run_with_learning_rate_5() -> None:
    """Loss 0.22 -> 1.10 on 3 classes, top-1 33 %, recommended alpha 0: all four say so."""
    ws = training_warnings(
        first_loss=0.22, final_loss=1.10, num_classes=3, learning_rate=5.0,
        evaluations=frontier({0.0: 1.0, 0.25: 1.0, 0.5: 4 / 6, 0.75: 2 / 6, 1.0: 2 / 6}, n=6), recommended_alpha=0.0,
    )
    assert [w.code for w in ws] == list(CODES)
    diverged = ws[0]
    assert "0.2200" in diverged.message and "1.1000" in diverged.message
    assert diverged.hint.startswith("try a learning rate 10x lower (0.5 instead of 5)")
    assert ws[1].to_dict()["chance_loss"] == pytest.approx(math.log(3))
    assert "33.3%" in ws[2].message and "100.0%" in ws[2].message and ws[2].to_dict()["n"] == 6
    for w in ws:  # the shape jobs store and `saft finetune --json` prints: JSON, the contract's keys first
        d = w.to_dict()
        assert list(d)[:3] == ["code", "message", "hint"] and d["message"] and d["hint"]
        json.dumps(d, allow_nan=False)


@pytest.mark.parametrize(
    ("first", "final", "expected"),
    [
        (0.5, 0.8, ["loss_diverged"]),  # above 1.5x its start
        (0.5, 0.7, []),  # higher, but less than 1.5x: noise of small batches
        (0.02, 0.1, []),  # 5x, but only 0.08 above a loss near zero
        (0.02, 0.13, ["loss_diverged"]),
        (float("nan"), 0.3, ["loss_diverged"]),
        (0.4, float("inf"), ["loss_diverged"]),
    ],
)
def test_loss_diverged(first: float, final: float, expected: list[str]) -> None:
    got = codes(first_loss=first, final_loss=final)
    assert got == expected
    if got and not math.isfinite(first * final):  # a number JSON cannot hold is stored as null
        assert None in training_warnings(**{**HEALTHY, "first_loss": first, "final_loss": final})[0].numbers.values()


@pytest.mark.parametrize(
    ("final", "num_classes", "expected"),
    [
        (math.log(3), 3, True),  # exactly a uniform guess
        (math.log(3) * 0.995, 3, True),  # float noise below it
        (math.log(3) * 0.95, 3, False),
        (2.3, 12, False),  # ln 12 = 2.48: poor, but better than guessing
        (2.6, 12, True),
    ],
)
def test_loss_at_chance(final: float, num_classes: int, expected: bool) -> None:
    got = codes(first_loss=final, final_loss=final, num_classes=num_classes)
    assert ("loss_at_chance" in got) is expected
    assert "loss_diverged" not in got  # it did not rise


def test_worse_than_zero_shot_reads_the_validation_split_only() -> None:
    val = frontier({0.0: 0.9, 0.5: 0.9, 1.0: 0.8})
    shifted_worse = frontier({0.0: 0.9, 1.0: 0.2}, dataset="ds_sketch")  # shift may cost: not a warning
    assert codes(evaluations=val, recommended_alpha=0.5) == ["worse_than_zero_shot"]
    assert codes(evaluations=HEALTHY["evaluations"] + shifted_worse) == []
    # equal is not worse; no zero-shot point (--no-zero-shot) is nothing to compare with
    assert codes(evaluations=frontier({0.0: 0.8, 1.0: 0.8}), recommended_alpha=1.0) == []
    assert codes(evaluations=frontier({0.5: 0.9, 1.0: 0.1}), recommended_alpha=0.5) == []


def test_recommended_alpha_zero() -> None:
    ws = training_warnings(**{**HEALTHY, "evaluations": frontier({0.0: 0.8, 0.5: 0.81, 1.0: 0.8}),
                              "recommended_alpha": 0.0})
    assert [w.code for w in ws] == ["recommended_alpha_zero"]
    assert "zero-shot 80.0%, best 81.0%" in ws[0].message
    assert codes(recommended_alpha=0.25) == [] and codes(recommended_alpha=None) == []
