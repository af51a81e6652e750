"""The GPU tier: tests marked ``gpu`` run on CUDA and are skipped where there is none.

``SAFT_TEST_DEVICE=cpu`` runs them on the CPU at smaller sizes: the rehearsal of the GPU check
(``scripts/gpu_check.sh --cpu``) that CI runs, so the code of these tests is exercised on every change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from saft_worlds.shapes import render_shapes


def _device() -> str:
    return os.environ.get("SAFT_TEST_DEVICE", "cuda")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.device(_device()).type == "cuda" and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device (SAFT_TEST_DEVICE=cpu rehearses these tests on the CPU)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(_device())


@pytest.fixture(scope="session")
def on_gpu(device: torch.device) -> bool:
    """Full sizes on a GPU; the CPU rehearsal takes small ones."""
    return device.type == "cuda"


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 images, 64 px."""
    return render_shapes(tmp_path_factory.mktemp("shapes") / "train", per_class=16, seed=0)
