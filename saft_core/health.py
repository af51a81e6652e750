"""Training health: what a finished run's numbers say went wrong, as warnings with stable codes.

A run can end without an error and still be useless: a learning rate that is too high drives the loss up to
chance level and the fine-tuned model below the pre-trained one. ``training_warnings`` reads the numbers every
run already has (the training loss at its start and end, the validation split along alpha, the recommended
alpha) and returns one ``TrainingWarning`` per problem, each with a stable ``code``, a ``message`` of one
sentence with the numbers and a ``hint`` of what to try. It is a pure function: the pipeline calls it after
evaluating, ``saft finetune`` prints its result and the service stores it with the job (a job with warnings
still succeeds).

Codes:
- ``loss_diverged``: the loss is not finite, or it ended well above where it started
  (``end > max(DIVERGED_FACTOR * start, start + DIVERGED_MARGIN)``);
- ``loss_at_chance``: the loss ended at or above chance level, ``ln(num_classes)`` (the loss of a uniform guess;
  within ``CHANCE_TOLERANCE`` of it counts as at it);
- ``worse_than_zero_shot``: on the validation split, the fine-tuned model (alpha 1) scores a lower top-1 than
  the pre-trained one (alpha 0);
- ``recommended_alpha_zero``: the frontier's rule recommends alpha 0, the pre-trained model.

"Ended" is the mean loss of the last epoch (less noisy than its last batch), "started" the first step's loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .results import EvalScore

LOSS_DIVERGED = "loss_diverged"
LOSS_AT_CHANCE = "loss_at_chance"
WORSE_THAN_ZERO_SHOT = "worse_than_zero_shot"
RECOMMENDED_ALPHA_ZERO = "recommended_alpha_zero"
CODES: tuple[str, ...] = (LOSS_DIVERGED, LOSS_AT_CHANCE, WORSE_THAN_ZERO_SHOT, RECOMMENDED_ALPHA_ZERO)

DIVERGED_FACTOR = 1.5  # the loss ended above 1.5x its start ...
DIVERGED_MARGIN = 0.1  # ... and at least this much above it (a loss near 0 may wobble without diverging)
CHANCE_TOLERANCE = 0.01  # a loss within 1 % below ln(num_classes) is at chance (a uniform guess, to float noise)
VALIDATION = "validation"  # the name the validation split's evaluations carry (the pipeline uses this one)


@dataclass(frozen=True)
class TrainingWarning:
    """One problem of a finished run. ``numbers`` are the values the message quotes (finite floats, or None
    for a value that was not finite)."""

    code: str
    message: str
    hint: str
    numbers: dict[str, float | int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{code, message, hint, **numbers}``: the shape ``saft finetune --json`` prints and a job stores."""
        return {"code": self.code, "message": self.message, "hint": self.hint, **self.numbers}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _lower_lr(learning_rate: float | None) -> str:
    if learning_rate is None:
        return "try a learning rate 10x lower"
    return f"try a learning rate 10x lower ({learning_rate / 10:g} instead of {learning_rate:g})"


def training_warnings(
    *,
    first_loss: float,
    final_loss: float,
    num_classes: int,
    evaluations: Sequence[EvalScore] = (),
    recommended_alpha: float | None = None,
    learning_rate: float | None = None,
) -> list[TrainingWarning]:
    """The warnings a run's numbers raise, in the order of ``CODES``; empty for a healthy run.

    ``first_loss``: the loss of the first training step; ``final_loss``: the mean loss of the last epoch;
    ``num_classes``: classes trained on; ``evaluations``: the run's scores along alpha (only the validation
    split's rows are read); ``recommended_alpha``: the frontier's recommendation (None without a validation
    split); ``learning_rate``: the run's, quoted in the hints.
    """
    out: list[TrainingWarning] = []
    lower = _lower_lr(learning_rate)
    # 1) the loss: not finite, or ended well above its start
    finite = math.isfinite(first_loss) and math.isfinite(final_loss)
    if not finite:
        out.append(TrainingWarning(
            LOSS_DIVERGED,
            f"the training loss became {final_loss if not math.isfinite(final_loss) else first_loss} "
            "(not a finite number): the weights were pushed into overflow",
            f"{lower}; keep gradient clipping on (grad_clip, 1.0 by default)",
            {"first_loss": _finite(first_loss), "final_loss": _finite(final_loss)},
        ))
    elif final_loss > max(DIVERGED_FACTOR * first_loss, first_loss + DIVERGED_MARGIN):
        out.append(TrainingWarning(
            LOSS_DIVERGED,
            f"the training loss rose from {first_loss:.4f} at the first step to {final_loss:.4f} over the last "
            "epoch: training diverged instead of learning",
            lower,
            {"first_loss": first_loss, "final_loss": final_loss},
        ))
    # 2) the loss at or above a uniform guess
    chance = math.log(num_classes) if num_classes > 1 else 0.0
    if finite and num_classes > 1 and final_loss >= chance * (1.0 - CHANCE_TOLERANCE):
        out.append(TrainingWarning(
            LOSS_AT_CHANCE,
            f"the training loss ended at {final_loss:.4f}, at or above chance level for {num_classes} classes "
            f"(ln {num_classes} = {chance:.4f}): the model learned nothing about the training images",
            f"{lower}; if the loss never fell, check that the labels and class names are right",
            {"final_loss": final_loss, "chance_loss": chance, "num_classes": num_classes},
        ))
    # 3) the validation split: fine-tuned (alpha 1) against zero-shot (alpha 0)
    val = {e.alpha: e for e in evaluations if e.dataset == VALIDATION}
    if 0.0 in val and 1.0 in val and val[1.0].top1 < val[0.0].top1:
        ft, zs = val[1.0], val[0.0]
        out.append(TrainingWarning(
            WORSE_THAN_ZERO_SHOT,
            f"the fine-tuned model scores {ft.top1:.1%} top-1 on the validation split, below the zero-shot "
            f"model's {zs.top1:.1%} (n={ft.n}): fine-tuning made the model worse",
            f"{lower}, or use fewer epochs; meanwhile classify at the recommended alpha",
            {"fine_tuned_top1": ft.top1, "zero_shot_top1": zs.top1, "n": ft.n},
        ))
    # 4) the frontier's rule prefers the pre-trained weights
    if recommended_alpha == 0.0:
        zs_top1 = val[0.0].top1 if 0.0 in val else None
        best = max((e.top1 for e in val.values()), default=None)
        numbers: dict[str, float | int | None] = {"recommended_alpha": 0.0}
        if zs_top1 is not None and best is not None:
            numbers.update(zero_shot_top1=zs_top1, best_top1=best)
        out.append(TrainingWarning(
            RECOMMENDED_ALPHA_ZERO,
            "the recommended alpha is 0: on the validation split no fine-tuned point of the frontier beats the "
            "pre-trained model by more than one standard error"
            + (f" (zero-shot {zs_top1:.1%}, best {best:.1%})" if zs_top1 is not None and best is not None else ""),
            f"the fine-tuning did not pay off in distribution: {lower}, train on more images per class, or, if "
            "zero-shot is already good enough, keep the pre-trained model",
            numbers,
        ))
    return out
