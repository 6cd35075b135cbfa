"""Turns on the machine's cores: which loaded model generates next, and for how many answers.

llama.cpp batches the concurrent requests of one loaded model itself (up to its slots, one slot
an answer: a request for n answers takes n), but the
models of a mixture share the machine's cores: at most ``capacity`` models generate at once
(cores // threads each). ``Turns`` hands out turns under both rules at once: a waiting request
may start when its model is generating with a slot free (it joins the batch), or when its model
is idle and a core slot is free; among those, the highest priority goes first, then the
earliest, and no request joins a batch ahead of a more urgent one that waits for a core. A
staircase gives its readers the higher priority (the aggregator the highest), so the first
tokens of the answer come early. Taking both in one step also means a request never holds its
model while waiting for a core.

Each turn also measures its fair share of its model's time: while k answers of one model are
generated together, each request is charged 1/k of the elapsed time per answer it draws, so the
shares of a batch add up to the time the model was busy (``Share.seconds``), as if the requests
had taken turns.

Hand-written because the scheduling spans models: llama.cpp's own queue sees one model only.
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
    slots: int = field(compare=False, default=1)
    answers: int = field(compare=False, default=1)


@dataclass
class Share:
    """A turn's share of its model's time, in seconds (final once the turn ends), for the
    ``answers`` its request draws."""

    seconds: float = 0.0
    answers: int = 1


class Turns:
    """Turns for ``capacity`` models generating at once, each for up to its ``slots`` answers.

    Example:
        >>> turns = Turns(1)
        >>> with turns.turn("qwen", priority=2):
        ...     turns.acquire("smol", timeout=0.01) is None
        True
        >>> turns.acquire("smol", timeout=0.01) is not None
        True
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._running: dict[Hashable, list[Share]] = {}
        self._since: dict[Hashable, float] = {}
        self._waiting: list[_Ticket] = []
        self._changed = threading.Condition()
        self._arrivals = itertools.count()

    def acquire(
        self, model: Hashable, priority: int = 0, timeout: float | None = None, slots: int = 1,
        answers: int = 1,
    ) -> Share | None:  # fmt: skip
        """Take a turn for a request of ``answers`` answers of ``model``, which generates up to
        ``slots`` answers at once: its share of the model's time, or ``None`` when ``timeout``
        seconds pass first (a request for more answers than ``slots`` runs alone)."""
        ticket = _Ticket((-priority, next(self._arrivals)), model, slots, answers)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._waiting.append(ticket)
            while not self._may_start(ticket):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._waiting.remove(ticket)
                    self._changed.notify_all()
                    return None
                self._changed.wait(remaining)
            self._waiting.remove(ticket)
            share = Share(answers=ticket.answers)
            self._settle(model)
            self._running.setdefault(model, []).append(share)
            self._changed.notify_all()  # another may start too (on a free core, another model)
        return share

    def _may_start(self, ticket: _Ticket) -> bool:
        batch = self._running.get(ticket.model)
        if batch is not None:
            if sum(share.answers for share in batch) + ticket.answers > ticket.slots:
                return False
        elif len(self._running) >= self.capacity:
            return False
        return not any(t < ticket and t.model not in self._running for t in self._waiting)

    def _settle(self, model: Hashable) -> None:
        """Charge the time since the last change to the model's running turns, evenly by answer."""
        now = time.perf_counter()
        batch = self._running.get(model)
        if batch:
            each = (now - self._since[model]) / sum(share.answers for share in batch)
            for share in batch:
                share.seconds += each * share.answers
        self._since[model] = now

    def release(self, model: Hashable, share: Share) -> None:
        with self._changed:
            self._settle(model)
            batch = self._running.get(model, [])
            if share in batch:
                batch.remove(share)
            if not batch:
                self._running.pop(model, None)
            self._changed.notify_all()

    def wait_idle(self, model: Hashable, timeout: float | None = None) -> bool:
        """Wait until no request of ``model`` is generating (``False`` on timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: model not in self._running, timeout)

    @contextmanager
    def turn(
        self, model: Hashable, priority: int = 0, slots: int = 1, answers: int = 1
    ) -> Iterator[Share]:
        """Hold a turn of ``model`` inside the block (``priority``: higher goes first)."""
        share = self.acquire(model, priority, slots=slots, answers=answers)
        assert share is not None  # no timeout: acquire waits for its turn
        try:
            yield share
        finally:
            self.release(model, share)

    def lock(self, model: Hashable, slots: int = 1) -> ModelLock:
        """``model``'s turns, serving up to ``slots`` answers at once."""
        return ModelLock(self, model, slots)


@dataclass(frozen=True)
class ModelLock:
    """One model's turns: up to ``slots`` answers generate at once, the requests beyond wait."""

    turns: Turns
    model: Hashable
    slots: int = 1

    def acquire(
        self, timeout: float | None = None, priority: int = 0, answers: int = 1
    ) -> Share | None:
        return self.turns.acquire(self.model, priority, timeout, self.slots, answers)

    def release(self, share: Share) -> None:
        self.turns.release(self.model, share)

    def turn(self, priority: int = 0, answers: int = 1) -> contextlib.AbstractContextManager[Share]:
        return self.turns.turn(self.model, priority, self.slots, answers)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.turns.wait_idle(self.model, timeout)
