"""Plain result and callback types that cross the core's boundary (to the CLI, the worker, the API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import ModelSpec
from .errors import Cancelled

if TYPE_CHECKING:
    from .health import TrainingWarning

STAGES: tuple[str, ...] = ("loading", "scoring", "masking", "training", "evaluating", "saving")


@dataclass(frozen=True)
class Progress:
    """One progress report. ``loss`` and ``lr`` are set during training only."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None


def _noop(*_: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Callbacks:
    """How the core reports to its caller. All are plain callables: the core never sees Celery or HTTP.

    - ``on_stage(stage)``: a new stage of ``STAGES`` begins.
    - ``on_progress(progress)``: called at most once per batch/step; keep it cheap.
    - ``on_message(level, text)``: warnings and notes worth showing a user ("info" | "warning").
    - ``should_cancel()``: polled between batches/steps; when it returns True the core raises ``Cancelled``.
    """

    on_stage: Callable[[str], None] = _noop
    on_progress: Callable[[Progress], None] = _noop
    on_message: Callable[[str, str], None] = _noop
    should_cancel: Callable[[], bool] = _never

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise Cancelled()


Variant = Literal["zero-shot", "interpolated", "fine-tuned"]


def variant_at(alpha: float) -> Variant:
    """The name of the model at ``alpha``: the two ends keep the names that readers of evaluations know."""
    if alpha == 0.0:
        return "zero-shot"
    return "fine-tuned" if alpha == 1.0 else "interpolated"


@dataclass(frozen=True)
class EvalScore:
    """Accuracy of one model variant on one dataset. top-5 is top-min(5, num_classes).

    ``alpha`` is where the weights were on the way from the base (0, zero-shot) to the fine-tuned model (1):
    ``base + alpha * delta``."""

    dataset: str
    model: Variant
    alpha: float
    top1: float
    top5: float
    n: int
    num_classes: int


@dataclass(frozen=True)
class TensorMaskStats:
    name: str
    numel: int
    selected: int


@dataclass(frozen=True)
class MaskSummary:
    """What SAFT selected: ``k = round(ratio * num_eligible)`` entries over ``tensors``."""

    ratio: float
    k: int
    num_eligible: int
    num_params: int
    tensors: list[TensorMaskStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """What a finished run produced. Paths point at files written atomically. ``model`` is the base model as the
    core resolved it (``pretrained`` "default" becomes the model's tag), the one the checkpoint applies to."""

    checkpoint_path: Path
    mask_path: Path | None
    mask: MaskSummary | None
    evaluations: list[EvalScore]
    classes: list[str]
    base_sha256: str
    model: ModelSpec
    metrics: dict[str, float] = field(default_factory=dict)
    # the alpha the checkpoint recommends (frontier.recommend_alpha on the validation split); None without one
    recommended_alpha: float | None = None
    # what went wrong in training though the run completed (health.training_warnings); empty for a healthy run
    warnings: list[TrainingWarning] = field(default_factory=list)
