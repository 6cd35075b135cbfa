"""Run coroutines from synchronous code on one long-lived background event loop.

Synchronous ``invoke`` of a mixture makes its model calls through the models' async path on this
loop: a timed-out or cut-off call is then really cancelled (its HTTP request is closed), and
async HTTP clients that are cached per process keep living on the same loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use in a daemon thread."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="moa-graph-calls", daemon=True
            )
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the background loop and wait for its result.

    If the waiting thread is interrupted (``KeyboardInterrupt``), the coroutine is cancelled.

    Example:
        >>> async def double(x):
        ...     return 2 * x
        >>> run_sync(double(21))
        42
    """
    loop = background_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("run_sync was called from the background loop itself")
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise
