"""Turns on the cores: waiting requests go by priority, then by arrival; requests to a model
that is generating join its batch up to its slots; each turn is charged its share of the time."""

from __future__ import annotations

import threading
import time

from moa_graph.local.turns import Turns


def test_waiters_enter_by_priority_then_arrival() -> None:
    turns, order = Turns(1), []
    busy = turns.acquire("busy")
    assert busy is not None
    threads = []
    for name, priority in (("low-1", 0), ("low-2", 0), ("high", 2)):
        thread = threading.Thread(target=lambda n=name, p=priority: _take(turns, n, p, order))
        thread.start()
        threads.append(thread)
        _wait_for_waiters(turns, len(threads))  # queued before the next one arrives
    turns.release("busy", busy)
    for thread in threads:
        thread.join(5)
    assert order == ["high", "low-1", "low-2"]


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    turns = Turns(1)
    share = turns.acquire("a")
    assert share is not None
    assert turns.acquire("b", priority=5, timeout=0.01) is None
    turns.release("a", share)
    assert turns.acquire("b", timeout=1) is not None


def test_a_busy_model_does_not_hold_up_a_free_one() -> None:
    """Two cores: a request for a model that is busy waits; one for another model starts,
    even when it came later and ranks lower."""
    turns = Turns(2)
    share = turns.acquire("qwen")
    assert share is not None
    urgent = threading.Thread(target=turns.acquire, args=("qwen", 9))
    urgent.start()
    _wait_for_waiters(turns, 1)
    assert turns.acquire("smol", priority=0, timeout=1) is not None
    turns.release("qwen", share)
    urgent.join(5)
    assert not urgent.is_alive()


def test_requests_join_their_models_batch_up_to_its_slots() -> None:
    turns = Turns(1)
    first = turns.acquire("qwen", slots=2)
    assert turns.acquire("qwen", timeout=0.01, slots=2) is not None  # joins the batch
    assert turns.acquire("qwen", timeout=0.01, slots=2) is None  # both slots taken
    assert turns.acquire("smol", timeout=0.01) is None  # the one core is qwen's
    assert first is not None


def test_no_request_joins_a_batch_ahead_of_a_more_urgent_one_waiting_for_a_core() -> None:
    turns = Turns(1)
    running = turns.acquire("qwen", slots=4)
    assert running is not None
    urgent = threading.Thread(target=turns.acquire, args=("smol", 9))
    urgent.start()
    _wait_for_waiters(turns, 1)
    assert turns.acquire("qwen", priority=0, timeout=0.05, slots=4) is None
    joiner = turns.acquire("qwen", priority=10, timeout=0.05, slots=4)  # more urgent: joins
    assert joiner is not None
    turns.release("qwen", running)
    assert not turns.wait_idle("qwen", timeout=0.01)  # the urgent joiner still holds qwen
    assert urgent.is_alive()
    turns.release("qwen", joiner)
    urgent.join(5)  # then smol gets the core
    assert not urgent.is_alive()


def test_requests_generating_together_share_the_time() -> None:
    turns = Turns(1)
    started = time.perf_counter()
    alone = turns.acquire("qwen", slots=2)
    assert alone is not None
    time.sleep(0.1)
    joined = turns.acquire("qwen", slots=2)
    assert joined is not None
    time.sleep(0.2)
    turns.release("qwen", joined)
    turns.release("qwen", alone)
    busy = time.perf_counter() - started
    assert alone.seconds + joined.seconds <= busy  # the model's time, counted once
    assert alone.seconds - joined.seconds >= 0.1  # the time it ran alone is all its own
    assert joined.seconds >= 0.1  # half of the time they ran together
    assert turns.wait_idle("qwen", timeout=0)


def _take(turns: Turns, name: str, priority: int, order: list[str]) -> None:
    with turns.turn(name, priority):
        order.append(name)


def _wait_for_waiters(turns: Turns, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(turns._waiting) < count and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_request_for_several_answers_takes_as_many_slots_and_shares() -> None:
    turns = Turns(1)
    samples = turns.acquire("qwen", slots=3, answers=2)  # a request for two answers
    assert samples is not None
    one = turns.acquire("qwen", timeout=0.01, slots=3)  # the third slot
    assert one is not None
    assert turns.acquire("qwen", timeout=0.01, slots=3) is None  # all three answers taken
    time.sleep(0.15)
    turns.release("qwen", one)
    turns.release("qwen", samples)
    # three answers generated together: the request for two is charged two thirds (and all
    # of the moment it ran alone, after the other ended); an even split would give it half
    assert one.seconds > 0 and samples.seconds >= 1.9 * one.seconds
