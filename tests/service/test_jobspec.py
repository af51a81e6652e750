"""A job request maps onto the core's config once, and the API's defaults and ranges are the core's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from saft_core.config import DEFAULT_PRETRAINED, DataConfig, FullConfig, ModelSpec, SaftConfig, TrainConfig
from saft_service.jobspec import JobSpec, to_finetune_config


def test_defaults_are_the_cores() -> None:
    cfg = to_finetune_config(JobSpec(dataset_id="ds_a"), train_dir=Path("/d/a"), eval_dirs={})
    assert cfg.model == ModelSpec()  # same model and default weights as the CLI
    assert cfg.model.pretrained == DEFAULT_PRETRAINED
    assert cfg.train == TrainConfig()
    assert cfg.method == SaftConfig()
    assert cfg.data == DataConfig(train="/d/a")


def test_a_full_request_maps_field_by_field() -> None:
    spec = JobSpec.model_validate(
        {
            "dataset_id": "ds_a",
            "model": "saft-tiny",
            "pretrained": "none",
            "method": {"type": "saft", "ratio": 0.02, "towers": "image", "exclude_norms": True,
                       "scoring_batch_size": 8},
            "hyperparameters": {
                "epochs": 3,
                "learning_rate": 0.01,
                "batch_size": 4,
                "seed": 7,
                "shots": 2,
                "grad_clip": None,
                "grad_engine": "dense",
            },
            "eval_dataset_ids": ["ds_b"],
            "validation_fraction": 0.2,
            "templates": ["a {}.", "an image of a {}."],
        }
    )
    cfg = to_finetune_config(spec, train_dir=Path("/d/a"), eval_dirs={"ds_b": Path("/d/b")}, device="cpu")
    assert cfg.model.pretrained is None  # 'none': a seeded random init
    assert (cfg.method.type, cfg.method.ratio, cfg.train.epochs, cfg.train.seed) == ("saft", 0.02, 3, 7)
    assert cfg.train.grad_clip is None and cfg.train.learning_rate == 0.01
    assert cfg.train.grad_engine == "dense"
    assert isinstance(cfg.method, SaftConfig)
    assert (cfg.method.towers, cfg.method.exclude_norms, cfg.method.scoring_batch_size) == ("image", True, 8)
    assert cfg.data.eval == {"ds_b": "/d/b"} and cfg.data.shots == 2
    assert cfg.data.templates == ("a {}.", "an image of a {}.")
    assert cfg.device == "cpu"


def test_full_finetuning_has_no_ratio() -> None:
    cfg = to_finetune_config(
        JobSpec(dataset_id="d", method={"type": "full"}), train_dir=Path("."), eval_dirs={}
    )
    assert cfg.method == FullConfig()
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


def test_the_scoring_batch_in_its_former_place_means_the_same() -> None:
    """``hyperparameters.scoring_batch_size`` (where requests sent it before it became the SAFT method's) is
    still accepted and lands in ``method``; given in both places it must agree."""
    old = JobSpec.model_validate({"dataset_id": "d", "hyperparameters": {"scoring_batch_size": 8, "epochs": 2}})
    new = JobSpec.model_validate({"dataset_id": "d", "method": {"type": "saft", "scoring_batch_size": 8},
                                  "hyperparameters": {"epochs": 2}})
    assert old.model_dump() == new.model_dump()
    assert old.method.scoring_batch_size == 8 and "scoring_batch_size" not in type(old.hyperparameters).model_fields
    cfg = to_finetune_config(old, train_dir=Path("/d"), eval_dirs={})
    assert cfg.method == SaftConfig(scoring_batch_size=8) and cfg.train.epochs == 2
    with pytest.raises(ValidationError, match="scoring_batch_size"):  # its bounds still apply, in its new place
        JobSpec.model_validate({"dataset_id": "d", "hyperparameters": {"scoring_batch_size": 0}})
    with pytest.raises(ValidationError, match="differ"):
        JobSpec.model_validate({"dataset_id": "d", "method": {"type": "saft", "scoring_batch_size": 4},
                                "hyperparameters": {"scoring_batch_size": 8}})
    # full fine-tuning has no scoring batch (its evaluation reads the training batch): accepted, dropped
    full = JobSpec.model_validate({"dataset_id": "d", "method": {"type": "full"},
                                   "hyperparameters": {"scoring_batch_size": 8}})
    assert full.method.model_dump() == {"type": "full"}


def test_the_core_is_the_last_word_on_a_request() -> None:
    """What the fields' bounds cannot say, the core's own checks refuse when the request is validated."""
    with pytest.raises(ValidationError, match="model name must not be empty"):
        JobSpec.model_validate({"dataset_id": "d", "model": "   "})
