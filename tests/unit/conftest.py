"""Fixtures for the unit tier: CPU only, saft-tiny with a seeded random init, images drawn by the tests."""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saft_core.config import METHODS, DataConfig, FinetuneConfig, ModelSpec, TrainConfig
from saft_core.models import LoadedModel, load_model
from saft_worlds.shapes import draw_shape, render_shapes


@pytest.fixture(autouse=True)
def _cpu_and_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """3 classes x 8 images, 64 px."""
    return render_shapes(tmp_path_factory.mktemp("shapes") / "train", per_class=8, seed=0)


@pytest.fixture(scope="session")
def shapes_eval_dir(tmp_path_factory) -> Path:
    return render_shapes(tmp_path_factory.mktemp("shapes_eval") / "eval", per_class=4, seed=1)


@pytest.fixture(scope="session")
def _saft_tiny_once() -> LoadedModel:
    """saft-tiny with the seeded random init, loaded once; tests take copies of it (``saft_tiny``)."""
    return load_model(ModelSpec("saft-tiny", None, init_seed=0), "cpu")


@pytest.fixture
def saft_tiny(_saft_tiny_once: LoadedModel) -> LoadedModel:
    """A private copy of saft-tiny: whatever a test does to its weights, flags or gradients stays in that test."""
    return replace(_saft_tiny_once, model=copy.deepcopy(_saft_tiny_once.model))


def draw_image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_shape("red", "circle", random.Random(seed)).save(path)
    return path


def tiny_config(train_dir: Path, **overrides) -> FinetuneConfig:
    """A run that takes a couple of seconds on CPU. It trains on every image (no validation split, unlike
    the product's default) unless ``data`` asks for one, so the tests' step counts stay simple. ``method``
    picks the method by ``type`` (SAFT by default); its options the method does not have are left out (a
    full fine-tuning has no ratio)."""
    train_cfg = dict(epochs=2, batch_size=8, learning_rate=1e-3, seed=0)
    train_cfg.update(overrides.pop("train", {}))
    method_cfg = dict(type="saft", ratio=0.001, scoring_batch_size=8)
    method_cfg.update(overrides.pop("method", {}))
    method_cls = METHODS[method_cfg["type"]]
    data_cfg: dict = dict(train=str(train_dir), validation_fraction=0.0)
    data_cfg.update(overrides.pop("data", {}))
    return FinetuneConfig(
        model=ModelSpec("saft-tiny", None, init_seed=0),
        data=DataConfig(**data_cfg),
        train=TrainConfig(**train_cfg),
        method=method_cls(**{k: v for k, v in method_cfg.items() if k in method_cls.__dataclass_fields__}),
        device="cpu",
        **overrides,
    )
