"""A job request maps onto the core's config once, and the API's defaults and ranges are the core's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from saft_core.config import DEFAULT_PRETRAINED, DataConfig, ModelSpec, ScoringConfig, TrainConfig
from saft_service.jobspec import JobSpec, to_finetune_config


def test_defaults_are_the_cores() -> None:
    cfg = to_finetune_config(JobSpec(dataset_id="ds_a"), train_dir=Path("/d/a"), eval_dirs={})
    assert cfg.model == ModelSpec()  # same model and default weights as the CLI
    assert cfg.model.pretrained == DEFAULT_PRETRAINED
    assert cfg.train == TrainConfig()
    assert cfg.scoring == ScoringConfig()
    assert cfg.data == DataConfig(train="/d/a")


def test_a_full_request_maps_field_by_field() -> None:
    spec = JobSpec.model_validate(
        {
            "dataset_id": "ds_a",
            "model": "saft-tiny",
            "pretrained": "none",
            "method": {"type": "saft", "ratio": 0.02, "towers": "image", "exclude_norms": True},
            "hyperparameters": {
                "epochs": 3,
                "learning_rate": 0.01,
                "batch_size": 4,
                "seed": 7,
                "shots": 2,
                "grad_clip": None,
                "scoring_batch_size": 8,
                "grad_engine": "dense",
            },
            "eval_dataset_ids": ["ds_b"],
            "validation_fraction": 0.2,
            "templates": ["a {}.", "an image of a {}."],
        }
    )
    cfg = to_finetune_config(spec, train_dir=Path("/d/a"), eval_dirs={"ds_b": Path("/d/b")}, device="cpu")
    assert cfg.model.pretrained is None  # 'none': a seeded random init
    assert (cfg.train.method, cfg.train.ratio, cfg.train.epochs, cfg.train.seed) == ("saft", 0.02, 3, 7)
    assert cfg.train.grad_clip is None and cfg.train.learning_rate == 0.01
    assert cfg.train.grad_engine == "dense"
    assert (cfg.scoring.towers, cfg.scoring.exclude_norms, cfg.scoring.batch_size) == ("image", True, 8)
    assert cfg.data.eval == {"ds_b": "/d/b"} and cfg.data.shots == 2
    assert cfg.data.templates == ("a {}.", "an image of a {}.")
    assert cfg.device == "cpu"


def test_full_finetuning_has_no_ratio() -> None:
    cfg = to_finetune_config(
        JobSpec(dataset_id="d", method={"type": "full"}), train_dir=Path("."), eval_dirs={}
    )
    assert cfg.train.method == "full"
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset_id": "d", "method": {"type": "full", "ratio": 0.1}})


@pytest.mark.parametrize(
    "bad",
    [
        {"method": {"type": "saft", "ratio": 1.0}},
        {"hyperparameters": {"warmup_steps": -1}},
        {"hyperparameters": {"weight_decay": -0.1}},
        {"hyperparameters": {"shots": 0}},
        {"hyperparameters": {"grad_engine": "fast"}},
        {"eval_dataset_ids": ["x", "x"]},
        {"templates": ["{} and {}"]},
        {"hyperparameters": {"learning_rate": float("nan")}},
        {"dataset_id": "d\x00"},
    ],
)
def test_out_of_range_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset_id": "d", **bad})


def test_the_services_limits_apply_at_submission_not_to_stored_jobs() -> None:
    """A stored spec is trusted when read (a lowered limit never makes old jobs unreadable); the request
    model applies the limits of the settings, each error typed with the limit's code."""
    from api.schemas import JobCreate

    big = {"dataset_id": "d", "metadata": {"blob": "x" * 9000}}
    JobSpec.model_validate(big)
    with pytest.raises(ValidationError) as e:
        JobCreate.model_validate(big)
    assert e.value.errors()[0]["type"] == "metadata_too_large"
