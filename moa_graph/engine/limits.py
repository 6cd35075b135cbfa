"""A cap on the model calls of one mixture that are in flight at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Iterator


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

    @contextlib.contextmanager
    def sync_slot(self) -> Iterator[None]:
        if self._sync is None:
            yield
            return
        with self._sync:
            yield

    @contextlib.asynccontextmanager
    async def async_slot(self) -> AsyncIterator[None]:
        if self.limit is None:
            yield
            return
        loop = asyncio.get_running_loop()
        semaphore = self._async.get(loop)
        if semaphore is None:
            semaphore = self._async[loop] = asyncio.Semaphore(self.limit)
        async with semaphore:
            yield
