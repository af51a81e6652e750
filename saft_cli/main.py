"""One ``saft`` parser from every layer's commands, in the order ``saft --help`` lists them."""

from __future__ import annotations

import argparse

import api.api_command
import saft_core.cli
import saft_service.service_commands
import saft_worlds.world_commands
import worker.worker_command

from . import remote, serve


def build_parser() -> argparse.ArgumentParser:
    """The ``saft`` parser: the core's commands, the generators' (synth, world), then ``serve``, the API's, the
    worker's, the service's and the remote ones (datasets, jobs, usage)."""
    parser, sub = saft_core.cli.new_parser()
    saft_core.cli.register(sub)
    saft_worlds.world_commands.register(sub)
    serve.register(sub)
    api.api_command.register(sub)
    worker.worker_command.register(sub)
    saft_service.service_commands.register(sub)
    remote.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``saft`` with ``argv`` (default: the process's arguments); the exit status."""
    return saft_core.cli.run(build_parser(), argv)
