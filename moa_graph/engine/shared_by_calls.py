"""What the proposer calls of one layer of one run share (its race, a batch of samples).

LangGraph runs each proposer call as its own task, and nothing guarantees that the tasks of a
layer overlap in time: on a busy machine, or under ``max_concurrency``, one may end before the
next starts. So a shared object is kept from the first call that holds it until every call
expected to hold it has come and gone, not merely while some call holds it (a later call would
otherwise find nothing and start over: a second race, or the whole batch's request paid again).

Calls that never come cannot let go, so an entry also goes when:

- the layer's join forgets it (a resumed run re-runs only the proposers it had not saved);
- a call holding it is abandoned, ending by an exception rather than an outcome (the run was
  cancelled, interrupted or failed: a resumed run must not meet a stale race, whose deadline
  started in the run before);
- more than ``max_idle`` entries wait, no call holding them, for calls yet to come (the oldest
  goes first): a bound for runs abandoned where no call of theirs could tell.

A known limit: a run stopped while none of its layer's calls held the entry (a sync
``invoke`` interrupted between two calls under ``max_concurrency``, a ``step_timeout``) leaves
the entry in place, and a run resumed in the same process meets it, its deadline started in
the run before. LangGraph gives a resumed run's tasks nothing that tells them from the first
run's (task ids and the run's id are the same), so no key can part them.

Hand-written because the lifetime spans LangGraph tasks, which share nothing else but the run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

Key = tuple[Hashable, ...]
"""``(run_id, layer, ...)``."""


@dataclass
class _Entry(Generic[T]):
    value: T
    expected: int  # calls that will hold it
    arrived: int = 0
    active: int = 0  # calls holding it now


class SharedByCalls(Generic[T]):
    """Objects keyed ``(run_id, layer, ...)``, each kept until its expected calls have come and
    gone (see the module docstring).

    Example:
        >>> shared: SharedByCalls[list[int]] = SharedByCalls()
        >>> first = shared.hold(("run", 1), callers=2, make=list)
        >>> shared.release(("run", 1))  # one call ended; the other has not started yet
        >>> shared.hold(("run", 1), callers=2, make=list) is first
        True
        >>> shared.release(("run", 1))
        >>> len(shared)
        0
    """

    def __init__(self, max_idle: int = 1024) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._entries: dict[Key, _Entry[T]] = {}
        self._idle: OrderedDict[Key, None] = OrderedDict()  # held by no call, oldest first

    def hold(self, key: Key, *, callers: int, make: Callable[[], T]) -> T:
        """The object of ``key``, made by the first of its ``callers`` calls; each call that
        holds it must ``release`` it once when it ends."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(make(), callers)
            entry.arrived += 1
            entry.active += 1
            self._idle.pop(key, None)
            return entry.value

    def release(self, key: Key, *, abandoned: bool = False) -> None:
        """A call of ``key`` ended: with an outcome, or ``abandoned`` (by an exception)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return  # forgotten already
            entry.active -= 1
            if abandoned or (entry.active <= 0 and entry.arrived >= entry.expected):
                self._drop(key)
            elif entry.active <= 0:
                self._idle[key] = None
                while len(self._idle) > self.max_idle:
                    self._drop(next(iter(self._idle)))

    def forget(self, run_id: str, layer: int) -> None:
        """Drop what is left of ``layer`` of ``run_id`` (its join: no call of it runs now)."""
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (run_id, layer)]:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        self._entries.pop(key, None)
        self._idle.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
