"""The MoA graph for LangGraph Server (``langgraph dev``, ``langgraph up``, LangGraph Platform).

``langgraph.json`` at the repository root points at :data:`graph`, which is built when the
server imports this module. Which mixture it serves comes from environment variables, so one
image or deployment serves any recipe without code changes:

* ``MOA_GRAPH_CONFIG``: path of a TOML recipe (the command line's ``--config`` format);
* ``MOA_GRAPH_PRESET``: a preset name (``moa``, ``moa-lite``, ``moa-gpt4o``, ``together``,
  ``local``, ``local-tiny``), used when no config is given;
* neither: ``together`` when ``TOGETHER_API_KEY`` is set, else ``local`` (as the command line).

Provider keys and endpoints come from the providers' own variables (``TOGETHER_API_KEY``,
``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` for an OpenAI-compatible server, ...), set in the
deployment's environment, never in the recipe or the request.

The graph takes ``{"messages": [...]}`` and returns the conversation with the aggregator's
answer and every proposal; ``context`` (``MoAContext``) is passed with each run.

Threads live where the server keeps them: LangGraph Platform in its PostgreSQL, ``langgraph dev``
in memory. To keep them in your own PostgreSQL (or SQLite) without the Platform, serve
``langgraph-postgres.json``, whose ``checkpointer`` is :func:`served_checkpointer`, and set
``MOA_GRAPH_CHECKPOINT`` to the database's URL. The threads' checkpoints then outlive the server:
``moa_graph.checkpoints.checkpointer(url)`` reads them from Python, and ``graph.invoke(None,
config)`` there finishes a run whose server died, re-paying no proposer that had answered.
(``langgraph dev`` keeps its own records of threads and runs in its process; LangGraph
Platform keeps those in its database too.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from moa_graph.checkpoints import SCHEMES, async_checkpointer
from moa_graph.presets import Recipe, choose_recipe

__all__ = [
    "CHECKPOINT_ENV",
    "GRAPH_NAME",
    "build_served_graph",
    "graph",
    "served_checkpointer",
    "served_recipe",
]

CHECKPOINT_ENV = "MOA_GRAPH_CHECKPOINT"
"""The environment variable naming where :func:`served_checkpointer` keeps threads."""

GRAPH_NAME = "mixture_of_agents"
"""The compiled graph's name (its runs and traces are called so)."""


def served_recipe(environ: Mapping[str, str] | None = None) -> Recipe:
    """The recipe the environment selects (see the module docstring).

    Raises:
        ValueError: both ``MOA_GRAPH_CONFIG`` and ``MOA_GRAPH_PRESET`` are set, the config
            cannot be read, or the preset is unknown.

    Example:
        >>> served_recipe({"MOA_GRAPH_PRESET": "moa-lite"}).name
        'moa-lite'
        >>> served_recipe({}).name
        'local'
    """
    env = dict(os.environ if environ is None else environ)
    config, preset = env.get("MOA_GRAPH_CONFIG"), env.get("MOA_GRAPH_PRESET")
    if config and preset:
        raise ValueError("set either MOA_GRAPH_CONFIG or MOA_GRAPH_PRESET, not both")
    return choose_recipe(preset=preset, config=config, environ=env)


def build_served_graph(
    environ: Mapping[str, str] | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the MoA graph of the environment's recipe (without a checkpointer).

    LangGraph Server adds its own checkpointer and store, so threads keep their state (the
    conversation and the last run's proposals) between runs.
    """
    return served_recipe(environ).graph().compile(name=GRAPH_NAME)


@asynccontextmanager
async def served_checkpointer() -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """The checkpointer ``MOA_GRAPH_CHECKPOINT`` names, for LangGraph Server's ``checkpointer``.

    ``langgraph-postgres.json`` points the server at it (``"backend": "custom"``); the server
    opens it once at start-up and keeps every thread there. The URL is a
    :func:`moa_graph.checkpoints.checkpointer` URL; tables are created on first use.

    Raises:
        ValueError: ``MOA_GRAPH_CHECKPOINT`` is unset or not a checkpoint URL.
    """
    url = os.environ.get(CHECKPOINT_ENV, "")
    if not url:
        raise ValueError(
            f"{CHECKPOINT_ENV} is not set: set it to where threads are kept "
            f"({', '.join(SCHEMES[1:])}), or serve langgraph.json to keep them in the server"
        )
    async with async_checkpointer(url) as saver:
        yield saver


graph = build_served_graph()
"""The served graph, built at import from the environment."""
