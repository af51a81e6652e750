"""Settings for every tier, applied before any test module imports torch, and the fixtures the tiers share.

OpenMP threads busy-wait between parallel regions; on a machine whose cores are shared with other jobs the
waiting threads take the cores from the working ones and a test of saft-tiny runs 30 times slower (a 1.4 s
scoring test took 44 s). Passive waiting costs next to nothing on an idle machine. Subprocesses the tests
start (the CLI, Celery workers) inherit it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The running service (stacks, stores, dataset archives) and the remote run are fixtures of every tier that drives
# the service (api, service, client, console, worker). The tiers that run the model in process (core, cli) take
# tests.fixtures.model in their conftest instead: its ``shapes_dir`` is a bigger set than the stacks' one.
pytest_plugins = ["tests.fixtures.stack", "tests.fixtures.remote"]
