"""One source per option: the core's config fields give the CLI's flags and the job spec's fields the same
defaults, bounds and help, and the three refuse the same values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest
from pydantic import ValidationError

from saft_core.config import DataConfig, SaftConfig, TrainConfig
from saft_core.errors import ConfigError
from saft_core.flags import add_options, add_training_options, config_values, method_values, train_values
from saft_core.options import bound_error, describe_bounds, option, option_of, options
from saft_service.jobspec import Hyperparameters, JobSpec, SaftMethod


def training_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_training_options(p)
    return p


# (config class, field, where the job spec has it, a value just outside the bounds)
OUTSIDE = [
    (SaftConfig, "ratio", ("method", "ratio"), 1.0),
    (SaftConfig, "ratio", ("method", "ratio"), 0.0),
    (SaftConfig, "scoring_batch_size", ("method", "scoring_batch_size"), 0),
    (TrainConfig, "epochs", ("hyperparameters", "epochs"), 1001),
    (TrainConfig, "batch_size", ("hyperparameters", "batch_size"), 0),
    (TrainConfig, "learning_rate", ("hyperparameters", "learning_rate"), 0.0),
    (TrainConfig, "weight_decay", ("hyperparameters", "weight_decay"), -0.5),
    (TrainConfig, "warmup_steps", ("hyperparameters", "warmup_steps"), -1),
    (TrainConfig, "seed", ("hyperparameters", "seed"), 2**31),
    (DataConfig, "shots", ("hyperparameters", "shots"), 0),
    (DataConfig, "validation_fraction", ("validation_fraction",), 1.0),
]


@pytest.mark.parametrize(("cls", "name", "where", "value"), OUTSIDE, ids=lambda v: str(v))
def test_the_cli_the_job_spec_and_the_core_refuse_the_same_values(cls, name, where, value):
    o = option_of(cls, name)
    # the CLI, while parsing
    with pytest.raises(argparse.ArgumentError, match=r"must be .*got"):
        training_parser().parse_args([o.flag, str(value)])
    # the job spec, when a request is validated
    body: dict = {"dataset_id": "d"}
    node = body
    for key in where[:-1]:
        node = node.setdefault(key, {"type": "saft"} if key == "method" else {})
    node[where[-1]] = value
    with pytest.raises(ValidationError):
        JobSpec.model_validate(body)
    # the core, in __post_init__
    kwargs = {"train": "x"} if cls is DataConfig else {}
    with pytest.raises(ConfigError, match=f"{name} must be"):
        cls(**kwargs, **{name: value})


def test_values_on_the_bounds_are_accepted_everywhere():
    args = training_parser().parse_args(["--epochs", "1000", "--seed", str(2**31 - 1), "--ratio", "0.5"])
    cfg, method = TrainConfig(**train_values(args)), SaftConfig(**method_values(args))
    assert (cfg.epochs, cfg.seed, method.ratio) == (1000, 2**31 - 1, 0.5)
    JobSpec.model_validate({"dataset_id": "d", "hyperparameters": {"epochs": 1000, "seed": 2**31 - 1}})


def test_defaults_and_help_are_the_cores():
    p = training_parser()
    args = p.parse_args([])
    assert config_values(args, TrainConfig, skip=("grad_clip",)) == {
        o.name: o.default for o in options(TrainConfig) if o.name != "grad_clip"
    }
    hp = Hyperparameters.model_fields
    for o in options(TrainConfig):
        if o.name in hp:
            assert hp[o.name].default == o.default and hp[o.name].description == o.help
    method = SaftMethod.model_fields
    assert method["score_reduction"].description == option_of(SaftConfig, "score_reduction").help
    assert method["ratio"].description == option_of(SaftConfig, "ratio").help
    for o in options(SaftConfig):  # the section is the config: every field, same name, default and help
        assert method[o.name].default == o.default and method[o.name].description == o.help
    assert set(method) == {o.name for o in options(SaftConfig)}
    assert "Peak learning rate (AdamW)" in p.format_help()


def test_choices_come_from_the_literal():
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        training_parser().parse_args(["--towers", "both"])
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset_id": "d", "method": {"type": "saft", "towers": "both"}})
    with pytest.raises(ConfigError, match="unknown towers 'both'"):
        SaftConfig(towers="both")


def test_a_new_option_is_one_declaration():
    """A field declared with ``option`` is a bounded flag with its help, checked by the dataclass too."""

    @dataclass(frozen=True)
    class Toy:
        steps: int = option("How many steps.", default=3, ge=1, le=9)
        mode: Literal["a", "b"] = option("Which mode.", default="a")
        fast: bool = option("Go fast.", default=False)

        def __post_init__(self) -> None:
            from saft_core.options import check_bounds

            check_bounds(self)

    p = argparse.ArgumentParser(exit_on_error=False)
    add_options(p, Toy)
    assert Toy(**config_values(p.parse_args(["--steps", "9", "--mode", "b", "--fast"]), Toy)) == Toy(9, "b", True)
    assert "How many steps (default 3)" in p.format_help()
    with pytest.raises(argparse.ArgumentError, match=r"must be in \[1, 9\], got 10"):
        p.parse_args(["--steps", "10"])
    with pytest.raises(argparse.ArgumentError, match="must be a whole number"):
        p.parse_args(["--steps", "2.5"])
    with pytest.raises(ConfigError, match=r"steps must be in \[1, 9\], got 0"):
        Toy(steps=0)


@pytest.mark.parametrize(
    ("bounds", "words"),
    [({"ge": 1}, ">= 1"), ({"gt": 0.0, "lt": 1.0}, "in (0, 1)"), ({"ge": 0.0, "lt": 1.0}, "in [0, 1)"),
     ({"le": 10}, "<= 10"), ({"gt": 0.5}, "> 0.5")],
)
def test_bounds_in_words(bounds, words):
    assert describe_bounds(bounds) == words


def test_nan_is_outside_every_bound():
    assert bound_error(float("nan"), {"gt": 0.0}) is not None
    assert bound_error(0.5, {"gt": 0.0, "lt": 1.0}) is None


def test_jobs_create_sends_every_training_option():
    """``saft jobs create`` sends what ``saft finetune`` would run, the grad engine included."""
    from saft_cli.main import build_parser
    from saft_cli.remote import job_options

    args = build_parser().parse_args(["jobs", "create", "--dataset", "d", "--grad-engine", "dense", "--lr", "0.01",
                                      "--grad-clip", "0", "--towers", "image"])
    opts = job_options(args)
    hp, method = opts["hyperparameters"], opts["method"]
    assert hp["grad_engine"] == "dense" and hp["learning_rate"] == 0.01 and hp["grad_clip"] is None
    assert method["towers"] == "image" and method["scoring_batch_size"] == hp["batch_size"] == 32
    assert {o.name for o in options(TrainConfig)} <= set(hp)
    assert {o.name for o in options(SaftConfig)} <= set(method)


@pytest.mark.parametrize("method", ["saft", "full"])
def test_saft_finetune_and_saft_jobs_create_read_the_same_flags(method):
    """One reading of the flags: the remote command sends the configs the local one would run."""
    from saft_cli.main import build_parser
    from saft_cli.remote import job_options

    flags = ["--method", method, "--ratio", "0.02", "--towers", "image", "--batch-size", "8", "--grad-clip", "0",
             "--shots", "3", "--seed", "5"]
    parser = build_parser()
    local = parser.parse_args(["finetune", "--train", "x", "--out", "y", *flags])
    sent = job_options(parser.parse_args(["jobs", "create", "--dataset", "d", *flags]))
    assert sent["method"] == method_values(local) and sent["method"]["type"] == method
    assert sent["hyperparameters"] == {**train_values(local), "shots": 3}
    assert TrainConfig(**train_values(local)).grad_clip is None
    if method == "saft":  # the scoring batch defaults to the training batch in both
        assert SaftConfig(**sent["method"]) == SaftConfig(ratio=0.02, towers="image", scoring_batch_size=8)
    else:  # full fine-tuning has none of SAFT's options
        assert sent["method"] == {"type": "full"}


def test_every_way_to_start_a_job_holds_out_a_validation_split_by_default():
    """The frontier and the health checks need a validation split: the core's default (one source) is what
    `saft finetune`, `saft jobs create` and the API use; the client sends nothing and gets the API's. 0 turns
    it off."""
    from saft_client._base import job_body

    from api.schemas import JobCreate
    from saft_cli.main import build_parser
    from saft_cli.remote import job_options

    default = option_of(DataConfig, "validation_fraction").default
    assert default == DataConfig(train="x").validation_fraction == 0.2
    parser = build_parser()
    assert parser.parse_args(["finetune", "--train", "x", "--out", "y"]).validation_fraction == default
    assert job_options(parser.parse_args(["jobs", "create", "--dataset", "d"]))["validation_fraction"] == default
    assert JobSpec.model_validate({"dataset_id": "d"}).validation_fraction == default
    assert JobCreate.model_json_schema()["properties"]["validation_fraction"]["default"] == default  # the console
    assert "validation_fraction" not in job_body("d")  # the client leaves it to the server ...
    assert job_body("d", validation_fraction=0)["validation_fraction"] == 0  # ... and 0 still says none
    assert JobSpec.model_validate({"dataset_id": "d", "validation_fraction": 0}).validation_fraction == 0


def test_the_openapi_document_shows_the_cores_help(tmp_path):
    from api.main import create_app
    from saft_service.settings import Settings

    schemas = create_app(Settings(data_dir=tmp_path)).openapi()["components"]["schemas"]
    for o in options(TrainConfig):
        if o.name in Hyperparameters.model_fields:
            prop = schemas["Hyperparameters"]["properties"][o.name]
            assert prop["description"] == o.help and prop["default"] == o.default
    ratio = schemas["SaftMethod"]["properties"]["ratio"]
    assert (ratio["exclusiveMinimum"], ratio["exclusiveMaximum"]) == (0.0, 1.0)


def test_jobs_create_leaves_the_bounds_to_the_service():
    """The remote command parses types only: the service's core, not this one, decides the ranges."""
    from saft_cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["jobs", "create", "--dataset", "d", "--batch-size", "0"])
    assert args.batch_size == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--train", "x", "--out", "y", "--batch-size", "0"])
