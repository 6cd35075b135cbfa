"""PostgreSQL for experiments that several processes share (``moa-graph eval --store``).

Example:
    >>> is_postgres_url("postgresql://moa@db:5432/runs"), is_postgres_url("eval-runs/gsm8k")
    (True, False)
"""

from __future__ import annotations

from typing import Any

from moa_graph.redact import masked_url


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL database rather than a file."""
    return text.startswith(("postgresql://", "postgres://"))


def postgres_connection(url: str) -> Any:
    """An autocommitting connection to ``url`` (``ValueError`` naming the extra when psycopg
    is not installed, or naming the server when it cannot be reached)."""
    try:
        import psycopg
    except ImportError:
        raise ValueError(
            "store: psycopg is not installed: pip install 'moa-graph[postgres]'"
        ) from None
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ValueError(f"store: cannot reach {masked_url(url)}: {exc}".strip()) from None
