"""The worker that ``saft serve`` starts: ``saft worker``, which also tells its parent through a pipe when it is
ready to take jobs, so that ``saft serve`` prints the URL and the key after the worker's start-up output (its
banner, its warnings), as the last thing on screen.

    python -m saft_cli.serve_worker FD [saft worker options]
"""

from __future__ import annotations

import contextlib
import os
import sys

from .main import main


def run(argv: list[str]) -> int:
    """``saft worker argv[1:]`` that writes a line to file descriptor ``argv[0]`` once Celery says it is ready."""
    from celery import signals

    fd = int(argv[0])

    def ready(**_: object) -> None:
        with contextlib.suppress(OSError):  # the parent stopped waiting (its timeout): nothing to tell
            os.write(fd, b"ready\n")
        os.close(fd)

    signals.worker_ready.connect(ready, weak=False)
    return main(["worker", *argv[1:]])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
