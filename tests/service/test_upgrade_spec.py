"""Job specs stored by earlier versions are read in today's shape by one function, ``upgrade_spec``: one test
per shape that was ever written to ``jobs.spec`` (each a whole ``JobSpec.model_dump`` of its version)."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest

from saft_core.config import FullConfig, SaftConfig
from saft_service.jobspec import JobSpec, stored_spec, to_finetune_config, upgrade_spec

METHOD_V1 = {"type": "saft", "ratio": 0.01, "towers": "image", "exclude_embeddings": False, "exclude_norms": True,
             "exclude_biases": False, "score_reduction": "squared"}
HYPERPARAMETERS_V1 = {"epochs": 3, "learning_rate": 0.01, "batch_size": 16, "seed": 7, "weight_decay": 0.0,
                      "warmup_steps": 0, "grad_clip": None, "augment": False, "shots": None,
                      "scoring_batch_size": 8}


def first_service_spec() -> dict[str, Any]:
    """The first service's shape: no grad_engine, no priority; the scoring batch a hyper-parameter."""
    return {"dataset_id": "ds_a", "model": "saft-tiny", "pretrained": None, "method": deepcopy(METHOD_V1),
            "hyperparameters": deepcopy(HYPERPARAMETERS_V1), "eval_dataset_ids": ["ds_b"],
            "validation_fraction": 0.0, "templates": ["a photo of a {}."], "metadata": {"run": 1}}


def grad_engine_spec() -> dict[str, Any]:
    """After the sparse gradient engine: ``hyperparameters.grad_engine``; still no priority."""
    spec = first_service_spec()
    spec["hyperparameters"]["grad_engine"] = "dense"
    return spec


def fair_dispatch_spec() -> dict[str, Any]:
    """After fair dispatch, the last shape before the sections became the core's configs: ``priority``."""
    return {**grad_engine_spec(), "priority": "high"}


@pytest.mark.parametrize("shape", [first_service_spec, grad_engine_spec, fair_dispatch_spec])
def test_an_older_saft_spec_reads_as_today_with_its_scoring_batch_in_the_method(shape) -> None:
    raw = shape()
    before = deepcopy(raw)
    upgraded = upgrade_spec(raw)
    assert raw == before  # the caller's row is not changed
    assert upgraded["method"] == {**METHOD_V1, "scoring_batch_size": 8}
    assert "scoring_batch_size" not in upgraded["hyperparameters"]
    assert upgraded["hyperparameters"] == {k: v for k, v in raw["hyperparameters"].items() if k != "scoring_batch_size"}
    spec = stored_spec(raw)
    assert spec.method.scoring_batch_size == 8 and spec.method.towers == "image"
    assert spec.hyperparameters.grad_engine == raw["hyperparameters"].get("grad_engine", "sparse")
    assert spec.priority == raw.get("priority", "normal")
    cfg = to_finetune_config(spec, train_dir=Path("/d/a"), eval_dirs={"ds_b": Path("/d/b")})
    assert cfg.method == SaftConfig(ratio=0.01, towers="image", exclude_norms=True, score_reduction="squared",
                                    scoring_batch_size=8)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed, cfg.train.grad_clip) == (3, 16, 7, None)


def test_an_older_full_finetuning_spec_drops_its_scoring_batch() -> None:
    """Full fine-tuning has no scoring batch (its evaluation reads the training batch)."""
    raw = {**fair_dispatch_spec(), "method": {"type": "full"}}
    upgraded = upgrade_spec(raw)
    assert upgraded["method"] == {"type": "full"} and "scoring_batch_size" not in upgraded["hyperparameters"]
    cfg = to_finetune_config(stored_spec(raw), train_dir=Path("/d/a"), eval_dirs={"ds_b": Path("/d/b")})
    assert cfg.method == FullConfig() and cfg.train.batch_size == 16


def test_todays_shape_is_left_as_it_is() -> None:
    today = JobSpec.model_validate(upgrade_spec(fair_dispatch_spec())).model_dump(mode="json")
    assert upgrade_spec(today) == today
    assert upgrade_spec(upgrade_spec(first_service_spec())) == upgrade_spec(first_service_spec())
    assert stored_spec(today).model_dump() == JobSpec.model_validate(today).model_dump()


def test_stored_specs_are_trusted_not_validated_again() -> None:
    """An upgraded spec outside today's ranges still reads; the core refuses it only when the worker maps it."""
    raw = first_service_spec()
    raw["hyperparameters"]["scoring_batch_size"] = 10_000  # above today's bound
    spec = stored_spec(raw)
    assert spec.method.scoring_batch_size == 10_000
    with pytest.raises(ValueError, match="scoring_batch_size must be"):
        to_finetune_config(spec, train_dir=Path("/d/a"), eval_dirs={})
