"""A cap on the model calls of one mixture that are in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from contextlib import AbstractAsyncContextManager, AbstractContextManager


class CallLimiter:
    """At most ``limit`` calls at a time: per event loop for async calls, and for sync ones.

    Example:
        >>> limiter = CallLimiter(2)
        >>> with limiter.sync_slot():
        ...     limiter.limit
        2
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._sync = threading.BoundedSemaphore(limit) if limit else None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def sync_slot(self) -> AbstractContextManager[object]:
        """A slot for a blocking call, held while the ``with`` block runs."""
        return self._sync if self._sync is not None else contextlib.nullcontext()

    def async_slot(self) -> AbstractAsyncContextManager[object]:
        """A slot for a call on the running event loop, held while ``async with`` runs."""
        if not self.limit:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        semaphore = self._async.get(loop)
        if semaphore is None:
            semaphore = self._async[loop] = asyncio.Semaphore(self.limit)
        return semaphore
