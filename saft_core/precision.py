"""Mixed precision: which autocast a forward pass runs under.

``precision`` is an option of a run (``FinetuneConfig.precision``):

- ``auto``: bf16 autocast on a CUDA device that supports bf16 (Ampere and later), fp32 everywhere else;
- ``bf16``: bf16 autocast on any device, the CPU included. CI runs the code a GPU runs this way
  (``torch.autocast("cpu", dtype=torch.bfloat16)``): the same casts, the same bf16 gradients into the sparse
  engine, only slower;
- ``fp32``: no autocast.

Weights, optimizer state, SAFT's deltas and their gradients stay fp32 in every mode; autocast only runs the
matrix products of the forward (and so of the backward) in bf16. Losses are computed in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from .config import Precision
from .errors import ConfigError

__all__ = ["autocast", "resolved_precision"]


def resolved_precision(device: torch.device, precision: Precision = "auto") -> Precision:
    """``bf16`` or ``fp32``: what ``precision`` means on ``device``."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision 'bf16' was asked for but {torch.cuda.get_device_name(device)} has no bf16;"
                          " use 'auto' or 'fp32'")
    return precision


def autocast(device: torch.device, precision: Precision = "auto") -> contextlib.AbstractContextManager:
    """A fresh context manager for one forward pass (autocast keeps cached casts until its outermost exit)."""
    if resolved_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
