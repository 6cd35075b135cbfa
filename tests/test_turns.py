"""Turns on the cores: waiting requests go by priority, then by arrival."""

from __future__ import annotations

import threading
import time

from moa_graph.local.turns import Turns


def test_waiters_enter_by_priority_then_arrival() -> None:
    turns, order = Turns(1), []
    turns.acquire("busy")
    threads = []
    for name, priority in (("low-1", 0), ("low-2", 0), ("high", 2)):
        thread = threading.Thread(target=lambda n=name, p=priority: _take(turns, n, p, order))
        thread.start()
        threads.append(thread)
        while len(turns._waiting) < len(threads):  # queued before the next one arrives
            time.sleep(0.001)
    turns.release("busy")
    for thread in threads:
        thread.join(5)
    assert order == ["high", "low-1", "low-2"]


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    turns = Turns(1)
    turns.acquire("a")
    assert turns.acquire("b", priority=5, timeout=0.01) is False
    turns.release("a")
    assert turns.acquire("b", timeout=1)


def test_a_busy_model_does_not_hold_up_a_free_one() -> None:
    """Two cores: a request for a model that is busy waits; one for another model starts,
    even when it came later and ranks lower."""
    turns = Turns(2)
    turns.acquire("qwen")
    urgent = threading.Thread(target=turns.acquire, args=("qwen", 9))
    urgent.start()
    while not turns._waiting:
        time.sleep(0.001)
    assert turns.acquire("smol", priority=0, timeout=1)
    turns.release("qwen")
    urgent.join(5)
    assert not urgent.is_alive()


def _take(turns: Turns, name: str, priority: int, order: list[str]) -> None:
    with turns.turn(name, priority):
        order.append(name)
