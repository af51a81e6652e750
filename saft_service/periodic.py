"""A daemon thread that does one thing every few seconds: the reaper's pass, the webhook sender's pass, a job's
heartbeat, an upload's completing beat. Each of them is its ``tick``; this is the thread, its stop and its join.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from types import TracebackType


class Periodic:
    """Calls ``tick`` every ``interval`` seconds (first after one interval) in a daemon thread, from ``start()``
    until ``stop()``, or for the body of a ``with`` block, or until ``tick`` returns False.

    The thread runs in a copy of the starting thread's context, so its log lines carry the same ids (a job's, a
    request's). ``tick`` handles its own errors: an exception that escapes it ends the thread. ``stop()`` waits
    at most ``join_timeout`` seconds for a tick in progress.
    """

    def __init__(self, name: str, interval: float, tick: Callable[[], bool | None], *,
                 join_timeout: float = 5.0) -> None:
        self.interval, self._tick, self._join_timeout = interval, tick, join_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run_in_context, name=name, daemon=True)
        self._context: contextvars.Context | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when ``stop()`` came meanwhile (the tick should end)."""
        return self._stop.wait(seconds)

    def start(self) -> None:
        self._context = contextvars.copy_context()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._join_timeout)

    def __enter__(self) -> Periodic:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run_in_context(self) -> None:
        assert self._context is not None
        self._context.run(self._run)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._tick() is False:
                return
