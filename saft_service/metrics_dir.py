"""Where processes that share one metrics endpoint write their metrics (prometheus_client's multiprocess mode).

Several processes behind one endpoint (uvicorn's ``--workers``, a worker's job process beside the one that
serves the port) each count in memory of their own; prometheus_client's multiprocess mode makes them write
their values to files in ``PROMETHEUS_MULTIPROC_DIR``, which the endpoint sums at scrape time. The library
reads that variable when it is first imported, so this module does not import it, and
``use_multiprocess_dir`` must run before anything else does.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
log = logging.getLogger(__name__)


def use_multiprocess_dir(role: str) -> Path:
    """Turn on multiprocess mode for this process and the processes it starts; the folder.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as it is (it must be empty when the processes start: a
    fresh tmpfs, for example). Otherwise a new temporary folder is made and removed when this process exits.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
    else:
        if "prometheus_client" in sys.modules:
            log.warning("prometheus_client was imported before %s was set; this process's metrics stay its own", ENV)
        path = Path(tempfile.mkdtemp(prefix=f"saft-{role}-metrics-"))
        os.environ[ENV] = str(path)
        owner = os.getpid()  # a forked child inherits the exit hook: only the process that made it removes it

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    return path


def multiprocess_mode() -> bool:
    return bool(os.environ.get(ENV))
