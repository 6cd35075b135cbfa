"""A persistent LangChain LLM cache, so systems of one experiment share identical calls.

In an experiment, one model alone and the same model in a mixture's first layer get the same
messages; with a fixed seed they are the same call. ``CallCache`` (a SQLite file) answers a call
already made, whichever system makes it again, and survives an interrupted run. LangChain keys a
call by its messages (ids ignored) and the model's settings, call keywords (``seed``) included.

It also keeps how long each call took when it was made, so a system's cost in time does not
depend on whether another system made its calls first: inside ``timing_calls()`` every call made
or served through the cache adds its seconds (see ``CallTimes``).

Example:
    >>> import tempfile
    >>> from langchain_core.outputs import ChatGeneration
    >>> from langchain_core.messages import AIMessage
    >>> cache = CallCache(tempfile.mkdtemp() + "/calls.sqlite")
    >>> cache.update("prompt", "model", [ChatGeneration(message=AIMessage("4"))])
    >>> cache.lookup("prompt", "model")[0].message.content, cache.lookup("other", "model")
    ('4', None)
    >>> cache.hits, cache.misses
    (1, 1)
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The warning class LangChain's beta APIs raise (only exported from its private ``_api``).
from langchain_core._api.beta_decorator import LangChainBetaWarning
from langchain_core.caches import BaseCache
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation

from moa_graph.evaluation.postgres import create_table, is_postgres_url, postgres_connection
from moa_graph.redact import masked_url

_GENERATIONS = (ChatGeneration, ChatGenerationChunk, Generation, AIMessage, AIMessageChunk)
"""All a cached call may hold: only generations and the answer messages are revived."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CallTimes:
    """Seconds of the model calls of one block, made or served from a ``CallCache``.

    ``total`` is ``None`` when no call went through the cache or when one cached call predates
    timing (its time is unknown).

    Example:
        >>> times = CallTimes()
        >>> times.add(1.5); times.add(0.5); times.total
        2.0
        >>> times.add(None); times.total is None
        True
    """

    seconds: float = 0.0
    calls: int = 0
    unknown: int = 0

    def add(self, seconds: float | None, calls: int = 1) -> None:
        """Count ``calls`` model calls and their seconds (``None``: not known). Samples drawn
        in one request (``n``) are that many calls, as a mixture counts them, in one entry.

        Example:
            >>> times = CallTimes()
            >>> times.add(6.0, calls=3); (times.calls, times.total)
            (3, 6.0)
        """
        self.calls += calls
        if seconds is None:
            self.unknown += calls
        else:
            self.seconds += seconds

    @property
    def total(self) -> float | None:
        """The calls' seconds, or ``None`` if unknown."""
        return self.seconds if self.calls and not self.unknown else None


_current_times: ContextVar[CallTimes | None] = ContextVar("moa_graph_call_times", default=None)


@contextmanager
def timing_calls() -> Iterator[CallTimes]:
    """Add up the seconds of the model calls that go through a ``CallCache`` in this block.

    Worker threads and tasks started inside the block (proposers of a layer) count too.

    Example:
        >>> with timing_calls() as times:
        ...     pass
        >>> times.calls
        0
    """
    times = CallTimes()
    token = _current_times.set(times)
    try:
        yield times
    finally:
        _current_times.reset(token)


def _count(seconds: float | None, generations: Sequence[Generation]) -> None:
    if (times := _current_times.get()) is not None:
        times.add(seconds, calls=max(1, len(generations)))


def _reported_seconds(generation: Generation) -> float | None:
    """The compute seconds a model reports with one answer (``None``: it reports none)."""
    metadata = getattr(getattr(generation, "message", None), "response_metadata", {})
    seconds = metadata.get("compute_seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


def _reported_total(generations: Sequence[Generation]) -> float | None:
    """The compute time a request's answers report, added up (``None``: they report none)."""
    reported = [s for g in generations if (s := _reported_seconds(g)) is not None]
    return round(sum(reported), 3) if reported else None


def _call_seconds(generations: Sequence[Generation], started: float | None) -> float | None:
    """A request's own time: the compute time its answers report (local models leave out time
    queued behind other requests, and charge each answer of a request its part, so the parts
    add up), else the time since its cache miss (``None``: unknown)."""
    reported = _reported_total(generations)
    if reported is not None:
        return reported
    return None if started is None else round(time.perf_counter() - started, 3)


class CallCache(BaseCache):
    """LLM calls and their results, safe to use from several threads: in one SQLite file, or
    (``postgresql://...``) in a PostgreSQL table that every process of a sharded experiment
    shares, so an identical call is paid once across all of them."""

    def __init__(self, path: str | Path) -> None:
        self.path: Path | None = None
        self._calls: _CallRows
        if is_postgres_url(str(path)):
            self._calls = _PostgresCalls(str(path))
        else:
            self.path = Path(path)
            self._calls = _SqliteCalls(self.path)
        self._lock = threading.Lock()
        self._started: dict[tuple[str, str], float] = {}  # the calls in flight: when they missed
        self._closing = False
        self.hits = 0
        self.misses = 0

    @property
    def where(self) -> str:
        """Where the calls are kept, as logs may show it (a URL's password masked)."""
        return str(self.path) if self.path is not None else masked_url(self._calls.where)

    def __len__(self) -> int:
        with self._lock:
            return self._calls.count()

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        key = (_digest(prompt), _digest(llm_string))
        with self._lock:
            row = self._calls.fetch(key)
            if row is None:
                self.misses += 1
                self._started[key] = time.perf_counter()
                return None
            self.hits += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangChainBetaWarning)
            generations: list[Generation] = loads(row[0], allowed_objects=_GENERATIONS)
        # a timed row counts the time its answers report where they do: a row of several
        # answers stored before they were added up holds the first answer's part only
        reported = _reported_total(generations) if row[1] is not None else None
        _count(row[1] if reported is None else reported, generations)
        return generations

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        key = (_digest(prompt), _digest(llm_string))
        with self._lock:
            seconds = _call_seconds(return_val, self._started.pop(key, None))
            self._calls.store(key, dumps(list(return_val)), seconds)
            if self._closing and not self._started:
                self._calls.close()
        _count(seconds, return_val)

    def clear(self, **kwargs: Any) -> None:
        with self._lock:
            self._calls.clear()

    def close(self) -> None:
        """Close the store, once no call is in flight: a call still running when an
        experiment is interrupted keeps its answer as it ends, so a rerun pays nothing again.
        (A call that failed leaves its store open until the process ends.)"""
        with self._lock:
            self._closing = True
            if not self._started:
                self._calls.close()


class _CallRows:
    """Where ``CallCache`` keeps its rows: ``(prompt digest, llm digest) -> (generations,
    seconds)``."""

    where = ""

    def fetch(self, key: tuple[str, str]) -> tuple[str, float | None] | None:
        raise NotImplementedError

    def store(self, key: tuple[str, str], generations: str, seconds: float | None) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SqliteCalls(_CallRows):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.where = str(path)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (prompt TEXT, llm TEXT, generations TEXT, "
            "seconds REAL, PRIMARY KEY (prompt, llm))"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
        if "seconds" not in columns:  # a cache written before calls were timed
            self._db.execute("ALTER TABLE calls ADD COLUMN seconds REAL")
        self._db.commit()

    def fetch(self, key: tuple[str, str]) -> tuple[str, float | None] | None:
        row = self._db.execute(
            "SELECT generations, seconds FROM calls WHERE prompt = ? AND llm = ?", key
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def store(self, key: tuple[str, str], generations: str, seconds: float | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)",
                         (*key, generations, seconds))  # fmt: skip
        self._db.commit()

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def clear(self) -> None:
        self._db.execute("DELETE FROM calls")
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class _PostgresCalls(_CallRows):
    def __init__(self, url: str) -> None:
        self.where = url
        self._db = postgres_connection(url)
        create_table(
            self._db,
            "CREATE TABLE IF NOT EXISTS moa_calls (prompt TEXT, llm TEXT, generations TEXT, "
            "seconds DOUBLE PRECISION, PRIMARY KEY (prompt, llm))",
        )

    def fetch(self, key: tuple[str, str]) -> tuple[str, float | None] | None:
        row = self._db.execute(
            "SELECT generations, seconds FROM moa_calls WHERE prompt = %s AND llm = %s", key
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def store(self, key: tuple[str, str], generations: str, seconds: float | None) -> None:
        self._db.execute(
            "INSERT INTO moa_calls VALUES (%s, %s, %s, %s) ON CONFLICT (prompt, llm) "
            "DO UPDATE SET generations = EXCLUDED.generations, seconds = EXCLUDED.seconds",
            (*key, generations, seconds),
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM moa_calls").fetchone()[0])

    def clear(self) -> None:
        self._db.execute("DELETE FROM moa_calls")

    def close(self) -> None:
        self._db.close()
