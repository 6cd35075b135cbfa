"""Turns on the machine's cores: which loaded model generates next.

llama.cpp schedules the requests of one loaded model itself, but the models of a mixture share
the machine's cores: at most ``capacity`` generations run at once (cores // threads each), and a
loaded model serves one request at a time. ``Turns`` hands out turns under both rules at once: a
waiting request may start when a core slot is free and its model is idle, and among those that
may, the highest priority goes first, then the earliest. A staircase gives its readers the
higher priority (the aggregator the highest), so the first tokens of the answer come early.
Taking both in one step also means a request never holds its model while waiting for a core,
which would keep a more urgent request for that model waiting behind it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(order=True)
class _Ticket:
    rank: tuple[int, int]
    model: Hashable = field(compare=False)


class Turns:
    """Turns for ``capacity`` concurrent generations, one per model at a time.

    Example:
        >>> turns = Turns(1)
        >>> with turns.turn("qwen", priority=2):
        ...     turns.acquire("smol", timeout=0.01)
        False
        >>> turns.acquire("smol", timeout=0.01)
        True
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._busy: set[Hashable] = set()
        self._waiting: list[_Ticket] = []
        self._changed = threading.Condition()
        self._arrivals = itertools.count()

    def acquire(self, model: Hashable, priority: int = 0, timeout: float | None = None) -> bool:
        """Take a turn for ``model`` (``False`` when ``timeout`` seconds pass first)."""
        ticket = _Ticket((-priority, next(self._arrivals)), model)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._waiting.append(ticket)
            while not self._may_start(ticket):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._waiting.remove(ticket)
                    self._changed.notify_all()
                    return False
                self._changed.wait(remaining)
            self._waiting.remove(ticket)
            self._busy.add(model)
            self._changed.notify_all()  # another may start too (on a free core, another model)
        return True

    def _may_start(self, ticket: _Ticket) -> bool:
        if len(self._busy) >= self.capacity or ticket.model in self._busy:
            return False
        startable = [t for t in self._waiting if t.model not in self._busy]
        return min(startable) is ticket

    def release(self, model: Hashable) -> None:
        with self._changed:
            self._busy.discard(model)
            self._changed.notify_all()

    @contextmanager
    def turn(self, model: Hashable, priority: int = 0) -> Iterator[None]:
        """Hold ``model``'s turn inside the block (``priority``: higher goes first)."""
        self.acquire(model, priority)
        try:
            yield
        finally:
            self.release(model)

    def lock(self, model: Hashable) -> ModelLock:
        """``model``'s turn as a lock (``acquire(timeout=...)`` / ``release()``)."""
        return ModelLock(self, model)


@dataclass(frozen=True)
class ModelLock:
    """One model's turns, used like a lock: held, the model serves nobody else."""

    turns: Turns
    model: Hashable

    def acquire(self, timeout: float | None = None, priority: int = 0) -> bool:
        return self.turns.acquire(self.model, priority, timeout)

    def release(self) -> None:
        self.turns.release(self.model)

    def turn(self, priority: int = 0) -> contextlib.AbstractContextManager[None]:
        return self.turns.turn(self.model, priority)
