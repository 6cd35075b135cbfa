"""LangGraph checkpointers from a URL: where a mixture's threads keep their state.

``memory`` keeps threads in this process; ``sqlite:///path/to/file.db`` in a file (the
``sqlite`` extra); ``postgresql://user@host:port/db`` in PostgreSQL, shared by every process and
machine that reaches it (the ``postgres`` extra). A thread saved there survives its process: a
run killed mid-layer is resumed from any other process with ``graph.invoke(None, config)``, and
re-pays no proposer that had answered.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from moa_graph import create_moa_graph
    >>> fake = GenericFakeChatModel(messages=iter([]))
    >>> with checkpointer("memory") as saver:       # or "sqlite:///runs.db", "postgresql://..."
    ...     graph = create_moa_graph([fake], aggregator=fake, layers=2).compile(
    ...         checkpointer=saver)
    ...     type(graph.checkpointer).__name__
    'InMemorySaver'
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from moa_graph.extras import EXTRAS
from moa_graph.redact import masked_url

SCHEMES = ("memory", "sqlite:///PATH", "postgresql://...")
"""The checkpoint URLs understood, as help texts show them."""


def checkpoint_kind(url: str) -> str:
    """``"memory"``, ``"sqlite"`` or ``"postgres"``; ``ValueError`` for any other URL.

    Example:
        >>> checkpoint_kind("postgresql://moa@db:5432/runs")
        'postgres'
    """
    if url == "memory":
        return "memory"
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise ValueError(f"checkpoint: must be one of {', '.join(SCHEMES)} (got {masked_url(url)!r})")


_SAVERS = {
    ("sqlite", False): ("langgraph.checkpoint.sqlite", "SqliteSaver"),
    ("sqlite", True): ("langgraph.checkpoint.sqlite.aio", "AsyncSqliteSaver"),
    ("postgres", False): ("langgraph.checkpoint.postgres", "PostgresSaver"),
    ("postgres", True): ("langgraph.checkpoint.postgres.aio", "AsyncPostgresSaver"),
}
_PACKAGES = {"sqlite": "langgraph-checkpoint-sqlite", "postgres": "langgraph-checkpoint-postgres"}


def _saver_class(kind: str, *, asynchronous: bool) -> Any:
    """LangGraph's saver class for ``kind``; ``ValueError`` naming the extra when missing."""
    module, name = _SAVERS[(kind, asynchronous)]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ValueError(
            f"checkpoint: {_PACKAGES[kind]} is not installed: {EXTRAS[kind].install}"
        ) from None


def _saver(kind: str, url: str, *, asynchronous: bool) -> Any:
    """LangGraph's saver for ``kind`` opened on ``url`` (a context manager)."""
    saver_class = _saver_class(kind, asynchronous=asynchronous)
    return saver_class.from_conn_string(url.removeprefix("sqlite:///"))


_SETUP_LOCK = 727_274_002
"""The advisory lock id under which LangGraph's tables are created or migrated: its ``setup()``
takes no lock, and processes starting together (``serve --workers N``) would collide.

Waiters poll ``pg_try_advisory_lock`` rather than wait in ``pg_advisory_lock``: a session
waiting inside a statement is an open transaction, which the holder's ``CREATE INDEX
CONCURRENTLY`` (one of LangGraph's migrations) waits for, so both would wait forever."""

_SETUP_POLL_SECONDS = 0.05


@contextmanager
def checkpointer(url: str) -> Iterator[BaseCheckpointSaver[Any]]:
    """The checkpointer ``url`` names, open inside the block (tables created on first use).

    Raises:
        ValueError: an unknown URL, or the extra it needs is not installed (with the command).
    """
    kind = checkpoint_kind(url)
    if kind == "memory":
        yield InMemorySaver()
        return
    with _saver(kind, url, asynchronous=False) as saver:
        if kind == "postgres":
            import psycopg

            with psycopg.connect(url, autocommit=True) as lock:
                while not _locked(lock.execute(_TRY_LOCK, (_SETUP_LOCK,)).fetchone()):
                    time.sleep(_SETUP_POLL_SECONDS)
                saver.setup()  # LangGraph's own migrations: creates or upgrades its tables
        yield saver


@asynccontextmanager
async def async_checkpointer(
    url: str, *, connections: int = 1
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The async twin of :func:`checkpointer` (for ``ainvoke`` and ``astream``).

    ``connections`` above 1 puts a PostgreSQL saver on a pool of up to that many connections,
    which also replaces a connection the database dropped. LangGraph's saver runs one query at
    a time whatever the pool, so this buys resilience, not parallel queries.
    """
    kind = checkpoint_kind(url)
    if kind == "memory":
        yield InMemorySaver()
        return
    opened = (
        _pooled_postgres_saver(url, connections)
        if kind == "postgres" and connections > 1
        else _saver(kind, url, asynchronous=True)
    )
    async with opened as saver:
        if kind == "postgres":
            await _setup_postgres(url, saver)
        yield saver


async def _setup_postgres(url: str, saver: Any) -> None:
    """Run LangGraph's migrations, one process at a time (the lock ends with its connection)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as lock:
        while not _locked(await (await lock.execute(_TRY_LOCK, (_SETUP_LOCK,))).fetchone()):
            await asyncio.sleep(_SETUP_POLL_SECONDS)
        await saver.setup()


_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"


def _locked(row: Any) -> bool:
    """Whether ``pg_try_advisory_lock`` took the lock (its one column)."""
    return bool(row and row[0])


@asynccontextmanager
async def _pooled_postgres_saver(url: str, connections: int) -> AsyncIterator[Any]:
    """LangGraph's ``AsyncPostgresSaver`` on a psycopg pool, set up as its own
    ``from_conn_string`` sets up its one connection (autocommit, dict rows, no prepared
    statements)."""
    saver_class = _saver_class("postgres", asynchronous=True)
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    options = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        url, min_size=1, max_size=connections, kwargs=options, open=False
    ) as pool:
        yield saver_class(conn=pool)
