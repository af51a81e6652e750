"""``saft worker``: one job worker (production: one per GPU; ``saft serve`` starts one as a child process)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from saft_core.cli import Subcommands
from saft_service.service_commands import settings_from_env

if TYPE_CHECKING:
    from saft_service.settings import Settings

POOLS = ("prefork", "solo")
PR_SET_PDEATHSIG = 1  # linux/prctl.h

log = logging.getLogger(__name__)


def exit_with_parent(parent: int) -> None:
    """End this process (SIGKILL) as soon as process ``parent``, which started it, dies, however it dies.

    Linux: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), which holds even while this process
    is busy or stuck; elsewhere a thread that watches the parent id. Celery's prefork pool processes already end
    with the worker the same way, so the whole tree goes. A job cut off like this is requeued by the reaper (or
    by the next ``saft serve``) and resumes from its snapshot.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the signal was armed
        log.error("the process that started this worker (%d) is gone; exiting", parent)
        os._exit(1)


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
    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)
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
    p.add_argument(
        "--exit-with-parent",
        type=int,
        metavar="PID",
        help="end at once when process PID, which started this worker, dies (saft serve passes its own)",
    )
    p.set_defaults(func=cmd_worker)
