"""The periodic thread under the reaper, the webhook sender and the heartbeats: it ticks, stops, ends when its
tick says so, and runs in the starter's context."""

from __future__ import annotations

import contextvars
import threading

from saft_service.periodic import Periodic

REQUEST = contextvars.ContextVar("request", default="none")


def test_it_ticks_until_stopped() -> None:
    ticks: list[int] = []
    third = threading.Event()

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            third.set()

    p = Periodic("t", 0.01, tick)
    p.start()
    assert third.wait(5)
    p.stop()
    assert p.stopping and not p._thread.is_alive()  # stopped: no tick after this
    assert len(ticks) >= 3


def test_a_tick_that_returns_false_ends_the_thread() -> None:
    calls: list[int] = []
    p = Periodic("t", 0.01, lambda: calls.append(1) is not None)  # append returns None: False ends it
    p.start()
    p._thread.join(5)
    assert not p._thread.is_alive()
    assert calls == [1]
    p.stop()  # stopping an ended thread is harmless


def test_the_thread_runs_in_the_starters_context_and_wait_sees_the_stop() -> None:
    seen: list[str] = []
    woke_early: list[bool] = []
    entered = threading.Event()

    def tick() -> bool:
        seen.append(REQUEST.get())
        entered.set()
        woke_early.append(p.wait(30))  # returns at once when stop() comes
        return False

    REQUEST.set("req-1")
    with Periodic("t", 0.01, tick) as p:
        assert entered.wait(5)
    assert seen == ["req-1"]
    assert woke_early == [True]
