"""Coordination of the proposers of one layer: straggler cut-off, layer deadline, fail-fast.

A ``LayerRace`` is shared by the proposer calls of one layer of one run. It works from threads
(synchronous ``invoke``) and from asyncio tasks (``ainvoke``) alike: waiters subscribe a
callback that is called once, when the layer stops waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RaceRules:
    """When a layer stops waiting for its remaining proposers.

    Args:
        first_k: stop once this many proposers answered (``None``: wait for all).
        deadline: seconds after the layer started (``None``: no deadline).
        fail_fast: stop at the first failure.
    """

    first_k: int | None = None
    deadline: float | None = None
    fail_fast: bool = False

    @property
    def can_stop_early(self) -> bool:
        return self.first_k is not None or self.deadline is not None or self.fail_fast


class LayerRace:
    """Counts a layer's outcomes and tells subscribers when to give up waiting.

    Example:
        >>> race = LayerRace(RaceRules(first_k=1), width=3)
        >>> race.answered()
        >>> race.stopped, race.reason
        (True, '1 proposer(s) of the layer already answered (first_k=1)')
    """

    def __init__(self, rules: RaceRules, width: int) -> None:
        self.rules = rules
        self.width = width
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._answers = 0
        self._ended = 0
        self._subscribers: list[Callable[[], object]] = []
        self._timer: threading.Timer | None = None
        if rules.deadline is not None:
            self._timer = threading.Timer(
                rules.deadline, self.stop, args=(f"layer deadline of {rules.deadline:g}s passed",)
            )
            self._timer.daemon = True
            self._timer.start()

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def subscribe(self, notify: Callable[[], object]) -> None:
        """Call ``notify`` (once) when the layer stops waiting; at once if it already has."""
        with self._lock:
            if self.reason is None:
                self._subscribers.append(notify)
                return
        notify()

    def answered(self) -> None:
        with self._lock:
            self._answers += 1
            answers = self._answers
        first_k = self.rules.first_k
        if first_k is not None and answers >= first_k:
            self.stop(f"{first_k} proposer(s) of the layer already answered (first_k={first_k})")
        self._ended_one()

    def failed(self) -> None:
        if self.rules.fail_fast:
            self.stop("fail_fast: another proposer of the layer failed")
        self._ended_one()

    def cancelled(self) -> None:
        self._ended_one()

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            subscribers, self._subscribers = self._subscribers, []
        self._cancel_timer()
        for notify in subscribers:
            notify()

    def _ended_one(self) -> None:
        with self._lock:
            self._ended += 1
            all_ended = self._ended >= self.width
        if all_ended:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
