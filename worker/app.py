"""The worker's Celery app: the shared configuration plus the job task.

Start it with ``saft worker`` (or ``celery -A worker.app worker``). Run one worker per GPU: concurrency is 1
and the job runs in the pool's child process, which is the first to touch CUDA.
"""

from __future__ import annotations

from saft_service.queue import make_celery
from saft_service.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]
