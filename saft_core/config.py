"""Typed configuration of the core. Mapped once from CLI flags or a job row, at the edge.

Each field is declared once with ``option`` (``options.py``): its default, bounds and help text, which the CLI's
flags, the service's job spec and the OpenAPI document read; ``__post_init__`` checks the same bounds, so an
invalid config never reaches a stage. Units: learning rates per step, ratios as fractions (0.001 = 0.1 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .options import check_bounds, option

DEFAULT_MODEL = "saft-tiny"
DEFAULT_PRETRAINED = "default"
# The tag "default" resolves to these; a model not listed gets its first open_clip tag (see models.py).
DEFAULT_TAGS: dict[str, str] = {DEFAULT_MODEL: "world"}
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
PLACEHOLDER = "{}"

ScoreReduction = Literal["abs", "abs_sum", "squared"]
Tower = Literal["all", "image", "text"]
GradEngine = Literal["sparse", "dense"]
Precision = Literal["auto", "bf16", "fp32"]
# Upper bounds that keep a request from asking for absurd work (the service's job spec reads them too).
MAX_BATCH_SIZE = 4096
MAX_SEED = 2**31 - 1


def check_template(template: str) -> None:
    """A prompt template is plain text with exactly one ``{}`` where the class name goes."""
    if template.count(PLACEHOLDER) != 1:
        raise ConfigError(f"template {template!r} must contain exactly one '{{}}' for the class name")


def fill_template(template: str, class_name: str) -> str:
    """Put ``class_name`` where the template's ``{}`` is. Plain substitution, never ``str.format``: any other
    brace in the template is text, so a template cannot ask for padding, indexing or attribute lookups."""
    before, after = template.split(PLACEHOLDER, 1)
    return before + class_name + after


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to start from."""

    name: str = option(
        "open_clip architecture (e.g. 'ViT-B-16', 'saft-tiny') or an 'hf-hub:org/repo' name.",
        default=DEFAULT_MODEL,
    )
    pretrained: str | None = option(
        "Pretrained tag (e.g. 'openai'), a local weights file, 'default' (the model's default tag: 'world' for "
        "saft-tiny, else the first tag open_clip lists), or None/'none' for a seeded random init.",
        default=DEFAULT_PRETRAINED,
    )
    init_seed: int = option("Seed of the random init when pretrained is none.", default=0, ge=0, le=MAX_SEED)

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.name or not self.name.strip():
            raise ConfigError("model name must not be empty")
        if self.pretrained is not None and self.pretrained.strip().lower() in {"", "none", "random"}:
            object.__setattr__(self, "pretrained", None)


@dataclass(frozen=True)
class SaftConfig:
    """Sparse fine-tuning: train the ``ratio`` fraction of eligible parameter entries with the largest gradient
    scores. Defaults are the paper's: every parameter eligible, score = sum over batches of |grad| per entry."""

    type: Literal["saft"] = option("The method: 'saft'.", default="saft")
    ratio: float = option("Fraction of eligible parameters SAFT fine-tunes.", default=0.001, gt=0.0, lt=1.0)
    towers: Tower = option("Which towers are eligible: 'all' (default), 'image' or 'text'.", default="all")
    exclude_embeddings: bool = option("Make token/positional/patch embeddings ineligible.", default=False)
    exclude_norms: bool = option("Make LayerNorm weights and biases ineligible.", default=False)
    exclude_biases: bool = option("Make bias vectors ineligible.", default=False)
    score_reduction: ScoreReduction = option(
        "'abs': sum_b |g_b| (default); 'abs_sum': |sum_b g_b|; 'squared': sum_b g_b^2.", default="abs"
    )
    scoring_batch_size: int = option(
        "Images per scoring batch (the evaluation reads batches of the same size).",
        default=32, ge=1, le=MAX_BATCH_SIZE, flag="--score-batch-size",
    )

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class FullConfig:
    """Full fine-tuning of every parameter (the baseline SAFT is compared with)."""

    type: Literal["full"] = option("The method: 'full'.", default="full")

    def __post_init__(self) -> None:
        check_bounds(self)


MethodConfig = SaftConfig | FullConfig
# Each method's config by its ``type``: the CLI's --method choices and the job spec's ``method`` union.
METHODS: dict[str, type[MethodConfig]] = {"saft": SaftConfig, "full": FullConfig}


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning loop, shared by SAFT and the full fine-tuning baseline."""

    epochs: int = option("Passes over the training set.", default=10, ge=1, le=1000)
    batch_size: int = option("Images per training step.", default=32, ge=1, le=MAX_BATCH_SIZE)
    learning_rate: float = option("Peak learning rate (AdamW).", default=1e-3, gt=0.0, le=10.0, flag="--lr")
    weight_decay: float = option(
        "AdamW weight decay. For SAFT it acts on the sparse delta, i.e. pulls toward the pre-trained "
        "weights; for full fine-tuning on the weights.",
        default=0.0,
        ge=0.0,
        le=10.0,
    )
    warmup_steps: int = option("Linear warm-up steps before the cosine decay.", default=0, ge=0, le=1_000_000)
    grad_clip: float | None = option(
        "Clip the global gradient norm (after masking); None disables.", default=1.0, gt=0.0
    )
    seed: int = option("Seed of the shuffle (and of k-shot sampling and splits).", default=0, ge=0, le=MAX_SEED)
    augment: bool = option("Use open_clip's training augmentation instead of the eval preprocessing.", default=False)
    grad_engine: GradEngine = option(
        "How SAFT gets the gradient at its mask: 'sparse' (default) computes weight gradients only at the "
        "selected entries; 'dense' computes every selected tensor's full gradient and gathers (the reference). "
        "Same result within float tolerance; full fine-tuning ignores it.",
        default="sparse",
    )

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class DataConfig:
    """Where the training and evaluation images are and how they are sampled."""

    train: str = option("ImageFolder directory or CSV manifest (path,label) of training images.")
    eval: dict[str, str] = option(
        "Further evaluation sets, name -> ImageFolder directory or CSV manifest (e.g. shifted domains).",
        default_factory=dict,
    )
    shots: int | None = option("Keep k images per class (seeded); None keeps all.", default=None, ge=1, le=100_000)
    validation_fraction: float = option(
        "Fraction of each class held out as the in-distribution validation split, which the recommended alpha "
        "and the validation checks of training health are judged on (0 holds out nothing).",
        default=0.2,
        ge=0.0,
        lt=1.0,
    )
    templates: tuple[str, ...] = option("Prompt templates with one '{}' for the class name.", default=DEFAULT_TEMPLATES)
    workers: int | None = option(
        "DataLoader worker processes that decode and transform images (resize, crop, normalise) for scoring,"
        " training and evaluation; 0 does it in the main process. Unset (None, the default): automatic, 0 on the"
        " CPU, on CUDA min(8, cores / GPUs of the machine), at least 1 (data.auto_workers). The same seed and the"
        " same number of workers give the same checkpoint.",
        default=None,
        ge=0,
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.templates:
            raise ConfigError("at least one prompt template is needed")
        for t in self.templates:
            check_template(t)


@dataclass(frozen=True)
class SnapshotConfig:
    """Snapshots of the training state, so that a run cut off resumes instead of starting again."""

    dir: str | None = option(
        "Folder for snapshots of the training state (and SAFT's mask); a run started again with the same folder "
        "and configuration resumes from its last snapshot. None: no snapshots.",
        default=None,
    )
    interval_s: float = option(
        "Least seconds between two snapshots of SAFT's state (k deltas and 2k optimizer floats: cheap).",
        default=30.0,
        ge=0.0,
    )
    dense_interval_s: float = option(
        "Least seconds between two snapshots of full fine-tuning's state (every weight and twice as many "
        "optimizer floats).",
        default=300.0,
        ge=0.0,
    )

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class FinetuneConfig:
    """A whole fine-tuning run: model, data, training loop, method, output."""

    model: ModelSpec
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = option(
        "'saft' (sparse, default) or 'full' (every parameter; the baseline).",
        default_factory=SaftConfig,
    )
    device: str | None = option("'cpu', 'cuda', 'cuda:1'; None picks CUDA when available.", default=None)
    precision: Precision = option(
        "'auto' (bf16 autocast on a CUDA device with bf16, fp32 elsewhere), 'bf16' (autocast on any device, the "
        "CPU included) or 'fp32'. Weights, SAFT's deltas and optimizer state stay fp32 in every mode.",
        default="auto",
    )
    evaluate_zero_shot: bool = option("Also evaluate the base model (the zero-shot baseline).", default=True)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
