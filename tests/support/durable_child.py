"""Child process of ``tests/test_durable.py``: start a mixture run on a checkpointed thread
(SQLite or PostgreSQL, by URL).

Usage: ``python durable_child.py '<settings json>'`` (see :class:`ChildSettings`). The run is
meant to be killed mid-layer by the parent; should it end, its answer is printed as one JSON line.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NotRequired, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability
from pydantic import SecretStr

from moa_graph import ProposerSpec, create_moa_graph
from moa_graph.checkpoints import checkpointer

QUESTION = "What are 3 fun things to do in SF?"


class ChildSettings(TypedDict):
    """What the child runs: the mixture, the server, the database and the thread."""

    checkpoint: str
    """Where the thread is kept: a ``moa_graph.checkpoints`` URL."""
    base_url: str
    api_key: str
    proposers: list[list[str]]
    """Model names, one list per proposer layer."""
    aggregator: str
    thread: str
    durability: Durability | None
    """LangGraph's durability mode (``None``: its default)."""
    samples: NotRequired[dict[str, int]]
    """Samples of a model, drawn in one request (default: one each)."""
    options: NotRequired[dict[str, Any]]
    """Further mixture settings (``staircase``, ...)."""
    continuation: NotRequired[str]
    """How the models continue a partial answer (the loopback server: ``"prefill"``)."""


def build_graph(
    settings: ChildSettings, saver: BaseCheckpointSaver[Any]
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The mixture the settings describe, compiled with ``saver`` (same in parent and child)."""

    def spec(model: str) -> ProposerSpec:
        samples = settings.get("samples", {}).get(model, 1)
        return ProposerSpec(
            model=f"openai:{model}",
            base_url=settings["base_url"],
            api_key=SecretStr(settings["api_key"]),
            samples=samples,
            samples_in_one_request=samples > 1 or None,
            continuation=settings.get("continuation"),
        )

    proposers = [[spec(model) for model in layer] for layer in settings["proposers"]]
    graph = create_moa_graph(
        proposers,
        aggregator=spec(settings["aggregator"]),
        timeout=60.0,
        max_retries=0,
        **settings.get("options", {}),
    )
    return graph.compile(checkpointer=saver)


def thread_config(settings: ChildSettings) -> RunnableConfig:
    """The run config naming the settings' thread."""
    return {"configurable": {"thread_id": settings["thread"]}}


def main(argv: list[str]) -> int:
    """Run the mixture on a new thread; print the answer if the run is not killed first."""
    settings: ChildSettings = json.loads(argv[0])
    with checkpointer(settings["checkpoint"]) as saver:
        graph = build_graph(settings, saver)
        result = graph.invoke(
            {"messages": [("user", QUESTION)]},
            thread_config(settings),
            durability=settings["durability"],
        )
    print(json.dumps({"answer": result["messages"][-1].text}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
