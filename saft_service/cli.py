"""The ``saft`` console script: the core's subcommands plus the service's (serve, api, worker, keys)."""

from __future__ import annotations

import sys

from saft_core.cli import build_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Service subcommands are added here (they import the service lazily, so the core CLI stays fast).
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
