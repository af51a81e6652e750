"""``saft worker``: one job worker (production: one per GPU; ``saft serve`` starts one as a child process)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from saft_core.cli import Subcommands
from saft_service.cli import settings_from_env

if TYPE_CHECKING:
    from saft_service.settings import Settings

POOLS = ("prefork", "solo")


def celery_argv(settings: Settings, *, pool: str) -> list[str]:
    """Celery's ``worker`` arguments: one job at a time from the service's queue. The embedded broker has no
    fanout, so gossip, mingle and heartbeats are off there."""
    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        "--concurrency=1",
        f"--pool={pool}",
        f"--queues={settings.queue_name}",
        "--hostname=saft@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from_env()
    if settings.worker_metrics_port:
        # The job runs in a child process: it writes its metrics where the port's process sums them.
        from saft_service.metrics_dir import use_multiprocess_dir

        use_multiprocess_dir("worker")
    from .app import app

    app.worker_main(celery_argv(settings, pool=args.pool))
    return 0


def register(sub: Subcommands) -> None:
    """Add ``worker`` to the ``saft`` parser's sub-commands."""
    p = sub.add_parser("worker", help="run one job worker (production: one per GPU)")
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="prefork",
        help="prefork runs each job in a child process, which is the first to touch CUDA",
    )
    p.set_defaults(func=cmd_worker)
