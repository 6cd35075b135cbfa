"""PostgreSQL for experiments that several processes share (``moa-graph eval --store``).

Example:
    >>> is_postgres_url("postgresql://moa@db:5432/runs"), is_postgres_url("eval-runs/gsm8k")
    (True, False)
"""

from __future__ import annotations

from typing import Any

from moa_graph.extras import EXTRAS
from moa_graph.redact import masked_url


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL database rather than a file."""
    return text.startswith(("postgresql://", "postgres://"))


_SCHEMA_LOCK = 727_274_001
"""The advisory lock id under which tables are created (one process at a time)."""


def create_table(connection: Any, statement: str) -> None:
    """Run a ``CREATE TABLE IF NOT EXISTS`` that several processes may run at once: PostgreSQL
    can fail one of two concurrent such statements, so they take turns under a lock."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        connection.execute(statement)


def postgres_connection(url: str) -> Any:
    """An autocommitting connection to ``url`` (``ValueError`` naming the extra when psycopg
    is not installed, or naming the server when it cannot be reached)."""
    try:
        import psycopg
    except ImportError:
        raise ValueError(f"store: psycopg is not installed: {EXTRAS['postgres'].install}") from None
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ValueError(f"store: cannot reach {masked_url(url)}: {exc}".strip()) from None
