"""Checkpointers from URLs: memory, a SQLite file, PostgreSQL; bad URLs and missing extras."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from moa_graph.checkpoints import async_checkpointer, checkpointer

CONFIG = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}


def _round_trip(url: str) -> str:
    from langgraph.checkpoint.base import empty_checkpoint

    checkpoint = empty_checkpoint()
    with checkpointer(url) as saver:
        saver.put(CONFIG, checkpoint, {"source": "input", "step": -1}, {})  # type: ignore[arg-type]
    with checkpointer(url) as saver:  # opened again: the checkpoint was kept
        saved = saver.get_tuple(CONFIG)  # type: ignore[arg-type]
    assert saved is not None
    return str(saved.checkpoint["id"])


def test_a_sqlite_file_keeps_threads_between_openings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    assert _round_trip(url)
    assert (tmp_path / "runs.db").exists()


def test_postgres_keeps_threads_between_openings(postgres_url: str) -> None:
    assert _round_trip(postgres_url)

    async def opened() -> str:
        async with async_checkpointer(postgres_url) as saver:
            saved = await saver.aget_tuple(CONFIG)  # type: ignore[arg-type]
            return type(saver).__name__ if saved is not None else "nothing saved"

    assert asyncio.run(opened()) == "AsyncPostgresSaver"


def test_memory_is_this_process_only() -> None:
    with checkpointer("memory") as saver:
        assert isinstance(saver, InMemorySaver)


@pytest.mark.parametrize("url", ["", "sqlite:///", "mysql://x", "postgres", "/tmp/runs.db"])
def test_an_unknown_url_is_refused_naming_the_forms(url: str) -> None:
    refused = pytest.raises(ValueError, match=r"checkpoint: must be one of memory, sqlite:///PATH")
    with refused, checkpointer(url):
        pass


def test_a_missing_extra_is_named_with_its_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.postgres", None)
    refused = pytest.raises(ValueError, match=r"pip install 'moa-graph\[postgres\]'")
    with refused, checkpointer("postgresql://moa@127.0.0.1:1/postgres"):
        pass


@pytest.mark.parametrize("connections", [1, 3])
def test_processes_opening_a_new_database_at_once_take_turns(
    postgres_database: str, connections: int
) -> None:
    """As ``serve --workers N`` does: LangGraph's migrations run under a lock, not in a race."""

    async def open_one() -> str:
        async with async_checkpointer(postgres_database, connections=connections) as saver:
            return type(saver).__name__

    async def open_together() -> list[str]:
        return await asyncio.gather(*(open_one() for _ in range(4)))

    assert asyncio.run(open_together()) == ["AsyncPostgresSaver"] * 4


def test_a_password_never_shows_in_the_refusal() -> None:
    with pytest.raises(ValueError) as refused, checkpointer("postgresql+psycopg://u:pw@db/x"):
        pass
    assert "pw" not in str(refused.value) and "u:***@db" in str(refused.value)
