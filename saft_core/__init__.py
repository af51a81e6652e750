"""saft_core: SAFT (Sparse Adaptation for Fine-Tuning) for open_clip models, as a plain library.

The public surface, imported lazily so that ``import saft_core`` (and the CLI's light commands) stay fast:

- configs: ``ModelSpec``, ``DataConfig``, ``TrainConfig``, the methods ``SaftConfig`` and ``FullConfig``,
  ``FinetuneConfig``
- one run end to end: ``finetune(cfg, out_dir, callbacks) -> FinetuneResult``; ``Callbacks``, ``Progress``
- the stages: ``score_parameters``, ``select_topk``, ``SparseUpdate``, ``train``, ``evaluate_dataset``
- models and checkpoints: ``load_model``, ``load_delta``, ``apply_delta``, ``Classifier``
- training health: ``training_warnings`` -> a ``TrainingWarning`` per problem of a finished run
- errors: ``SaftError`` and its subclasses (each with a stable ``code``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ModelSpec": "config", "DataConfig": "config", "TrainConfig": "config", "SaftConfig": "config",
    "FullConfig": "config",
    "FinetuneConfig": "config", "finetune": "pipeline", "FinetuneResult": "results", "Callbacks": "results",
    "Progress": "results", "EvalScore": "results", "MaskSummary": "results", "score_parameters": "scoring",
    "select_topk": "masking", "SparseUpdate": "training", "train": "training",
    "evaluate_dataset": "evaluation", "load_model": "models", "load_delta": "checkpoint",
    "apply_delta": "checkpoint", "Classifier": "inference", "training_warnings": "health",
    "TrainingWarning": "health", "SaftError": "errors", "ConfigError": "errors",
    "DataError": "errors", "ModelError": "errors", "CheckpointError": "errors", "Cancelled": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'saft_core' has no attribute {name!r}")
