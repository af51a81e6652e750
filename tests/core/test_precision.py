"""Precision of a run: what each mode means on a device, and a whole bf16 run on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from saft_core.checkpoint import DELTA
from saft_core.pipeline import CHECKPOINT_FILE, finetune
from saft_core.precision import autocast, resolved_precision
from saft_core.results import Callbacks
from tests.fixtures.model import tiny_config


def test_auto_is_fp32_on_the_cpu_and_bf16_is_honoured_there():
    cpu = torch.device("cpu")
    assert resolved_precision(cpu, "auto") == "fp32"
    assert resolved_precision(cpu, "bf16") == "bf16"
    assert resolved_precision(cpu, "fp32") == "fp32"
    x = torch.randn(4, 8)
    with autocast(cpu, "bf16"):
        assert torch.nn.functional.linear(x, torch.randn(3, 8)).dtype == torch.bfloat16
    with autocast(cpu, "auto"):
        assert torch.nn.functional.linear(x, torch.randn(3, 8)).dtype == torch.float32


@pytest.mark.slow  # a whole fine-tune
def test_a_bf16_run_on_the_cpu_trains_and_says_so(shapes_dir, tmp_path):
    messages: list[str] = []
    cfg = tiny_config(shapes_dir, precision="bf16", method=dict(ratio=0.01))
    result = finetune(cfg, tmp_path, Callbacks(on_message=lambda _level, text: messages.append(text)))
    assert any("on cpu (bf16)" in m for m in messages), messages
    deltas = [t for name, t in load_file(str(tmp_path / CHECKPOINT_FILE)).items() if name.endswith(DELTA)]
    assert deltas and all(bool(torch.isfinite(t).all()) for t in deltas)
    assert any(float(t.abs().max()) > 0 for t in deltas)  # it moved
    assert math.isfinite(result.metrics["train_loss_last"])
