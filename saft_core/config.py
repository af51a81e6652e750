"""Typed configuration of the core. Mapped once from CLI flags or a job row, at the edge.

Each field carries its help text in ``metadata["help"]`` (the CLI shows it); ``__post_init__`` validates, so an
invalid config never reaches a stage. Units: learning rates per step, ratios as fractions (0.001 = 0.1 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .errors import ConfigError

DEFAULT_MODEL = "saft-tiny"
DEFAULT_PRETRAINED = "default"
# The tag "default" resolves to these; a model not listed gets its first open_clip tag (see models.py).
DEFAULT_TAGS: dict[str, str] = {DEFAULT_MODEL: "world"}
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
PLACEHOLDER = "{}"

ScoreReduction = Literal["abs", "abs_sum", "squared"]
Tower = Literal["image", "text", "all"]
Method = Literal["saft", "full"]
GradEngine = Literal["sparse", "dense"]
GRAD_ENGINES: tuple[str, ...] = ("sparse", "dense")


def check_template(template: str) -> None:
    """A prompt template is plain text with exactly one ``{}`` where the class name goes."""
    if template.count(PLACEHOLDER) != 1:
        raise ConfigError(f"template {template!r} must contain exactly one '{{}}' for the class name")


def fill_template(template: str, class_name: str) -> str:
    """Put ``class_name`` where the template's ``{}`` is. Plain substitution, never ``str.format``: any other
    brace in the template is text, so a template cannot ask for padding, indexing or attribute lookups."""
    before, after = template.split(PLACEHOLDER, 1)
    return before + class_name + after


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def field_help(cls: type, name: str) -> str:
    """The help text of dataclass field ``name`` of ``cls`` (for CLI flags)."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to start from."""

    name: str = _help(
        "open_clip architecture (e.g. 'ViT-B-16', 'saft-tiny') or an 'hf-hub:org/repo' name.",
        default=DEFAULT_MODEL,
    )
    pretrained: str | None = _help(
        "Pretrained tag (e.g. 'openai'), a local weights file, 'default' (the model's default tag: 'world' for "
        "saft-tiny, else the first tag open_clip lists), or None/'none' for a seeded random init.",
        default=DEFAULT_PRETRAINED,
    )
    init_seed: int = _help("Seed of the random init when pretrained is none.", default=0)

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ConfigError("model name must not be empty")
        if self.pretrained is not None and self.pretrained.strip().lower() in {"", "none", "random"}:
            object.__setattr__(self, "pretrained", None)


@dataclass(frozen=True)
class ScoringConfig:
    """How SAFT scores parameters. Defaults are the paper's: sum over batches of |grad| per entry."""

    batch_size: int = _help("Images per scoring batch.", default=32)
    reduction: ScoreReduction = _help(
        "'abs': sum_b |g_b| (default); 'abs_sum': |sum_b g_b|; 'squared': sum_b g_b^2.", default="abs"
    )
    towers: Tower = _help("Which towers are eligible: 'all' (default), 'image' or 'text'.", default="all")
    exclude_embeddings: bool = _help("Make token/positional/patch embeddings ineligible.", default=False)
    exclude_norms: bool = _help("Make LayerNorm weights and biases ineligible.", default=False)
    exclude_biases: bool = _help("Make bias vectors ineligible.", default=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"scoring batch_size must be >= 1, got {self.batch_size}")
        if self.reduction not in ("abs", "abs_sum", "squared"):
            raise ConfigError(f"unknown score reduction {self.reduction!r}; use abs, abs_sum or squared")
        if self.towers not in ("image", "text", "all"):
            raise ConfigError(f"unknown towers {self.towers!r}; use all, image or text")


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning loop, shared by SAFT and the full fine-tuning baseline."""

    method: Method = _help("'saft' (sparse, default) or 'full' (every parameter; the baseline).", default="saft")
    ratio: float = _help("Fraction of eligible parameters SAFT fine-tunes, in (0, 1).", default=0.001)
    epochs: int = _help("Passes over the training set.", default=10)
    batch_size: int = _help("Images per training step.", default=32)
    learning_rate: float = _help("Peak learning rate (AdamW).", default=1e-3)
    weight_decay: float = _help(
        "AdamW weight decay. For SAFT it acts on the sparse delta, i.e. pulls toward the pre-trained "
        "weights; for full fine-tuning on the weights.",
        default=0.0,
    )
    warmup_steps: int = _help("Linear warm-up steps before the cosine decay.", default=0)
    grad_clip: float | None = _help("Clip the global gradient norm (after masking); None disables.", default=1.0)
    seed: int = _help("Seed of the shuffle (and of k-shot sampling and splits).", default=0)
    augment: bool = _help("Use open_clip's training augmentation instead of the eval preprocessing.", default=False)
    grad_engine: GradEngine = _help(
        "How SAFT gets the gradient at its mask: 'sparse' (default) computes weight gradients only at the "
        "selected entries; 'dense' computes every selected tensor's full gradient and gathers (the reference). "
        "Same result within float tolerance; full fine-tuning ignores it.",
        default="sparse",
    )

    def __post_init__(self) -> None:
        if self.method not in ("saft", "full"):
            raise ConfigError(f"unknown method {self.method!r}; use 'saft' or 'full'")
        if self.grad_engine not in GRAD_ENGINES:
            raise ConfigError(f"unknown grad_engine {self.grad_engine!r}; use 'sparse' or 'dense'")
        if not (0.0 < self.ratio < 1.0):
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0.0):
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0.0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip is not None and not (self.grad_clip > 0.0):
            raise ConfigError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


@dataclass(frozen=True)
class DataConfig:
    """Where the training and evaluation images are and how they are sampled."""

    train: str = _help("ImageFolder directory or CSV manifest (path,label) of training images.")
    eval: dict[str, str] = _help(
        "Further evaluation sets, name -> ImageFolder directory or CSV manifest (e.g. shifted domains).",
        default_factory=dict,
    )
    shots: int | None = _help("Keep k images per class (seeded); None keeps all.", default=None)
    validation_fraction: float = _help(
        "Fraction of each class held out as the in-distribution validation split (0 disables).", default=0.0
    )
    templates: tuple[str, ...] = _help("Prompt templates with one '{}' for the class name.", default=DEFAULT_TEMPLATES)
    workers: int = _help(
        "DataLoader worker processes that transform images (resize, crop, normalise) for scoring, training and"
        " evaluation; 0 does it in the main process. On a GPU a few workers keep the device fed. The same seed"
        " and the same number of workers give the same checkpoint.",
        default=0,
    )

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"shots must be >= 1 or None, got {self.shots}")
        if not (0.0 <= self.validation_fraction < 1.0):
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not self.templates:
            raise ConfigError("at least one prompt template is needed")
        for t in self.templates:
            check_template(t)


@dataclass(frozen=True)
class SnapshotConfig:
    """Snapshots of the training state, so that a run cut off resumes instead of starting again."""

    dir: str | None = _help(
        "Folder for snapshots of the training state (and SAFT's mask); a run started again with the same folder "
        "and configuration resumes from its last snapshot. None: no snapshots.",
        default=None,
    )
    interval_s: float = _help(
        "Least seconds between two snapshots of SAFT's state (k deltas and 2k optimizer floats: cheap).",
        default=30.0,
    )
    dense_interval_s: float = _help(
        "Least seconds between two snapshots of full fine-tuning's state (every weight and twice as many "
        "optimizer floats).",
        default=300.0,
    )

    def __post_init__(self) -> None:
        if not (self.interval_s >= 0.0 and self.dense_interval_s >= 0.0):
            raise ConfigError("snapshot intervals must be >= 0 seconds")


@dataclass(frozen=True)
class FinetuneConfig:
    """A whole fine-tuning run: model, data, scoring, training, output."""

    model: ModelSpec
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    device: str | None = _help("'cpu', 'cuda', 'cuda:1'; None picks CUDA when available.", default=None)
    evaluate_zero_shot: bool = _help("Also evaluate the base model (the zero-shot baseline).", default=True)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
