"""What the proposer calls of one layer of one run share (its race, a batch of samples).

LangGraph runs each proposer call as its own task, and nothing guarantees that the tasks of a
layer overlap in time: on a busy machine one may end before the next starts. So a shared object
is kept from the first call that asks for it until every call expected to use it has let go,
not merely while some call holds it (a later call would otherwise find nothing and start over:
a second race, or the whole batch's request paid again). Calls that never come (a resumed run
re-runs only the proposers it had not saved) cannot let go; the layer's join forgets what they
would have released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    holders: int  # calls still expected to let go


class SharedByCalls(Generic[T]):
    """Objects keyed ``(run_id, layer, ...)``, each kept until its expected calls let go.

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

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[Hashable, ...], _Entry[T]] = {}

    def hold(self, key: tuple[Hashable, ...], *, callers: int, make: Callable[[], T]) -> T:
        """The object of ``key``, made by the first of its ``callers`` calls; each call that
        holds it must ``release`` it once when it ends."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(make(), callers)
            return entry.value

    def release(self, key: tuple[Hashable, ...]) -> None:
        """One call of ``key`` ended; the object goes once every expected call has ended."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return  # forgotten by the layer's join already
            entry.holders -= 1
            if entry.holders <= 0:
                del self._entries[key]

    def forget(self, run_id: str, layer: int) -> None:
        """Drop what is left of ``layer`` of ``run_id`` (its join: no call of it runs now)."""
        with self._lock:
            for key in [k for k in self._entries if k[:2] == (run_id, layer)]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
