"""The ``saft`` command is composed from each layer's commands; the core's commands also run alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

import saft_core.cli
from saft_cli.main import build_parser

CORE = {"finetune", "classify", "evaluate", "apply"}
WORLDS = {"synth", "world"}
SERVICE = {"serve", "api", "worker", "migrate", "keys", "datasets", "jobs"}


def test_saft_has_every_layers_commands(capsys):  # capsys: the --help texts stay out of the log
    parser = build_parser()
    for name in CORE | WORLDS | SERVICE:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
    assert all(name in parser.format_help() for name in CORE | WORLDS | SERVICE)


def test_the_core_alone_has_only_its_commands():
    parser, sub = saft_core.cli.new_parser()
    saft_core.cli.register(sub)
    text = parser.format_help()
    assert all(name in text for name in CORE)
    assert not any(f"    {name} " in text for name in WORLDS | SERVICE)


def test_each_command_is_wired_to_its_layer():
    parser = build_parser()
    assert parser.parse_args(["worker"]).func.__module__ == "worker.worker_command"
    assert parser.parse_args(["api"]).func.__module__ == "api.api_command"
    assert parser.parse_args(["serve"]).func.__module__ == "saft_cli.serve"
    assert parser.parse_args(["keys", "list"]).func.__module__ == "saft_service.service_commands"
    assert parser.parse_args(["world", "domains"]).func.__module__ == "saft_worlds.world_commands"


def test_python_m_saft_cli_is_the_saft_command():
    r = subprocess.run([sys.executable, "-m", "saft_cli", "world", "domains"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "photo" in r.stdout.split()
