"""LangGraph checkpointers from a URL: where a mixture's threads keep their state.

``memory`` keeps threads in this process; ``sqlite:///path/to/file.db`` in a file (the
``durable`` extra); ``postgresql://user@host:port/db`` in PostgreSQL, shared by every process and
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

import importlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

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
    raise ValueError(f"checkpoint: must be one of {', '.join(SCHEMES)} (got {url!r})")


_SAVERS = {
    ("sqlite", False): ("langgraph.checkpoint.sqlite", "SqliteSaver"),
    ("sqlite", True): ("langgraph.checkpoint.sqlite.aio", "AsyncSqliteSaver"),
    ("postgres", False): ("langgraph.checkpoint.postgres", "PostgresSaver"),
    ("postgres", True): ("langgraph.checkpoint.postgres.aio", "AsyncPostgresSaver"),
}
_EXTRAS = {"sqlite": ("durable", "langgraph-checkpoint-sqlite"),
           "postgres": ("postgres", "langgraph-checkpoint-postgres")}  # fmt: skip


def _saver_class(kind: str, *, asynchronous: bool) -> Any:
    """LangGraph's saver class for ``kind``; ``ValueError`` naming the extra when missing."""
    module, name = _SAVERS[(kind, asynchronous)]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        extra, package = _EXTRAS[kind]
        raise ValueError(
            f"checkpoint: {package} is not installed: pip install 'moa-graph[{extra}]'"
        ) from None


def _saver(kind: str, url: str, *, asynchronous: bool) -> Any:
    """LangGraph's saver for ``kind`` opened on ``url`` (a context manager)."""
    saver_class = _saver_class(kind, asynchronous=asynchronous)
    return saver_class.from_conn_string(url.removeprefix("sqlite:///"))


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
            saver.setup()  # LangGraph's own migrations: creates or upgrades its tables
        yield saver


@asynccontextmanager
async def async_checkpointer(
    url: str, *, connections: int = 1
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The async twin of :func:`checkpointer` (for ``ainvoke`` and ``astream``).

    ``connections`` above 1 gives a PostgreSQL saver a pool of that many connections, for many
    concurrent runs (a server); one connection serves one query at a time.
    """
    kind = checkpoint_kind(url)
    if kind == "memory":
        yield InMemorySaver()
        return
    if kind == "postgres" and connections > 1:
        async with _pooled_postgres_saver(url, connections) as saver:
            await saver.setup()
            yield saver
        return
    async with _saver(kind, url, asynchronous=True) as saver:
        if kind == "postgres":
            await saver.setup()
        yield saver


@asynccontextmanager
async def _pooled_postgres_saver(url: str, connections: int) -> AsyncIterator[Any]:
    """LangGraph's ``AsyncPostgresSaver`` on a psycopg pool, set up as its own
    ``from_conn_string`` sets up its one connection (autocommit, dict rows, no prepared
    statements)."""
    saver_class = _saver_class("postgres", asynchronous=True)
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    options = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(url, max_size=connections, kwargs=options, open=False) as pool:
        yield saver_class(conn=pool)
