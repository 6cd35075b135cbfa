"""The server's log: lines that cannot flood, and no query string in the access log.

A hostile client can make the same line be logged as fast as it can open connections (asyncio's
``socket.accept() out of system resource``, uvicorn's ``Invalid HTTP request received.``): one
probe wrote 284,671 of them, 115 MB of stderr, in 30 s. :class:`RepeatLimit` lets each kind of
line through a few times a minute and then says how many it held back. A query string may carry
a key (``?api_key=...``, which the server refuses but uvicorn would log):
:class:`AccessQueryRedaction` drops it from the access log. :func:`log_config` is uvicorn's own
logging configuration with both filters in place (the standard library's ``logging.Filter``:
nothing hand-made but the two rules).

Only the standard library and uvicorn are imported (the test server runs in a lean process).

Example:
    >>> import logging
    >>> limit = RepeatLimit(burst=2, window=60.0)
    >>> record = lambda: logging.LogRecord("asyncio", 40, __file__, 1, "accept failed", None, None)
    >>> [limit.filter(record()) for _ in range(4)]
    [True, True, False, False]
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from uvicorn.config import LOGGING_CONFIG

LIMITED_LOGGERS = ("asyncio", "uvicorn.error", "moa_graph.serve.openai_app")
"""Loggers whose repeated lines are rate-limited (uvicorn's and asyncio's, and the server's)."""

REPEAT_BURST = 10
"""How many lines of one kind pass in a window before the rest are counted instead."""

REPEAT_WINDOW = 60.0
"""Seconds of a window of :class:`RepeatLimit`."""


class RepeatLimit(logging.Filter):
    """Passes at most ``burst`` log lines of one kind per ``window`` seconds.

    A kind is the logger and the line's format string (``record.msg``), so lines that differ
    only in their arguments (a client's address, a count) are one kind; access-log lines are a
    kind per status code, and only error statuses (400 and over) are limited. The first line of
    a kind in a new window says how many of the last window were held back.

    Args:
        burst: Lines of one kind passed per window.
        window: Seconds of a window.
        clock: The time source (tests).
    """

    def __init__(
        self,
        burst: int = REPEAT_BURST,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._kinds: dict[tuple[str, str], list[float | int]] = {}  # [start, passed, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self._kind(record)
        if kind is None:
            return True
        now = self.clock()
        with self._lock:
            state = self._kinds.get(kind)
            if state is None or now - state[0] >= self.window:
                held = int(state[2]) if state is not None else 0
                self._kinds[kind] = [now, 1, 0]
                if len(self._kinds) > 1000:  # kinds are format strings: a few dozen in practice
                    self._kinds = {kind: self._kinds[kind]}
                if held:
                    record.msg = (
                        f"{record.msg} ({held} similar lines held back in the last "
                        f"{self.window:g} s)"
                    )
                return True
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            return False

    @staticmethod
    def _kind(record: logging.LogRecord) -> tuple[str, str] | None:
        if record.name == "uvicorn.access":
            args = record.args if isinstance(record.args, tuple) else ()
            status = args[4] if len(args) >= 5 else None
            if not isinstance(status, int) or status < 400:
                return None  # successful requests are the operator's to size
            return record.name, str(status)
        return record.name, str(record.msg)


class AccessQueryRedaction(logging.Filter):
    """Drops the query string from uvicorn's access-log lines (it may carry a key).

    Example:
        >>> record = logging.LogRecord("uvicorn.access", 20, __file__, 1, "%s %s %s %s %d",
        ...     ("127.0.0.1:5", "POST", "/v1/chat/completions?api_key=sk-x", "1.1", 401), None)
        >>> AccessQueryRedaction().filter(record), record.args[2]
        (True, '/v1/chat/completions?[query removed]')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, question, _ = args[2].partition("?")
            if question:
                record.args = (*args[:2], f"{path}?[query removed]", *args[3:])
        return True


def log_config(*, access_log: bool = True) -> dict[str, Any]:
    """uvicorn's logging configuration (``uvicorn.config.LOGGING_CONFIG``) with the filters.

    asyncio's logger gets uvicorn's stderr handler too, so its lines are limited as well.

    Example:
        >>> config = log_config()
        >>> config["loggers"]["uvicorn.access"]["filters"]
        ['access_query', 'repeat_limit']
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "repeat_limit": {"()": RepeatLimit},
        "access_query": {"()": AccessQueryRedaction},
    }
    loggers = config["loggers"]
    loggers["uvicorn.error"]["filters"] = ["repeat_limit"]
    loggers["uvicorn.access"]["filters"] = ["access_query", "repeat_limit"]
    loggers["asyncio"] = {"handlers": ["default"], "propagate": False, "filters": ["repeat_limit"]}
    # a logger's filters see only the lines logged on it, not on its children: name each
    loggers["moa_graph.serve.openai_app"] = {"filters": ["repeat_limit"]}
    if not access_log:
        loggers["uvicorn.access"].update(handlers=[], propagate=False)
    return config
