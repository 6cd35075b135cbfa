"""What the proposer calls of a layer share (its race, a sample batch) is gone once the run is:
after it ends, after it is cancelled mid-layer, and a resumed run never meets the stale race of
the run before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from moa_graph import create_moa_graph
from tests.fakes import ScriptedChatModel, mixture_of

QUESTION = {"messages": [HumanMessage("Name a prime number.")]}

# LangGraph's own note when a run is cancelled before some of its tasks started
never_started = pytest.mark.filterwarnings("ignore:coroutine 'arun_with_retry' was never awaited")


def slow_mixture(delay: float, **settings: Any) -> Any:
    proposers = [ScriptedChatModel(reply=f"{n}", delay=delay) for n in (2, 3, 5)]
    return create_moa_graph(proposers, aggregator=ScriptedChatModel(reply="2"), layers=2,
                            **settings)  # fmt: skip


def shared(graph: Any) -> tuple[int, int]:
    mixture = mixture_of(graph)
    return len(mixture.races), len(mixture.batches)


@never_started
async def test_a_run_cancelled_mid_layer_leaves_nothing_behind() -> None:
    graph = slow_mixture(0.5, layer_timeout=30).compile()
    # one task at a time: the layer's later calls are still waiting when the run is cancelled
    run = asyncio.ensure_future(graph.ainvoke(QUESTION, {"max_concurrency": 1}))
    await asyncio.sleep(0.1)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert shared(graph) == (0, 0)


@never_started
async def test_a_resumed_run_gets_a_fresh_race_not_the_cancelled_runs() -> None:
    graph = slow_mixture(0.2, layer_timeout=0.5).compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}, "max_concurrency": 1}
    run = asyncio.ensure_future(graph.ainvoke(QUESTION, config))
    await asyncio.sleep(0.1)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await asyncio.sleep(0.6)  # the cancelled run's layer deadline has passed by now
    result = await graph.ainvoke(None, {"configurable": {"thread_id": "t"}})
    assert [p["status"] for p in result["proposals"]] == ["answered"] * 3
    assert shared(graph) == (0, 0)


def test_runs_that_end_leave_nothing_behind() -> None:
    graph = slow_mixture(0.0, first_k=1).compile()
    for config in ({}, {"max_concurrency": 1}):
        graph.invoke(QUESTION, config)
        assert shared(graph) == (0, 0)


def test_a_call_that_fails_as_it_starts_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moa_graph.engine import proposer_call

    def failing_emit(runtime: Any, **event: Any) -> None:
        if event.get("moa_event") == "proposal_started":
            raise RuntimeError("the progress stream is closed")

    monkeypatch.setattr(proposer_call, "emit", failing_emit)
    graph = slow_mixture(0.0, layer_timeout=30).compile()
    with pytest.raises(RuntimeError, match="progress stream"):
        graph.invoke(QUESTION, {"max_concurrency": 1})
    assert shared(graph) == (0, 0)
